// What an opened scene (a share link, a PNG) uses that this library lacks: its model and LoRAs, with
// where to get them when the scene says, and a button that fetches them from there.
import { addLoraFromUrl, startDownload } from '../app/actions.ts';
import { useStudio } from '../store/studio.ts';

function Source({ url, fingerprint, onFetch, testId }: { url?: string; fingerprint?: string; onFetch: () => void; testId: string }) {
  if (!url) return <>{fingerprint ? ` (fingerprint ${fingerprint})` : ''}</>;
  return (
    <>
      {' '}
      from{' '}
      <a href={url} target="_blank" rel="noreferrer noopener">
        {url}
      </a>{' '}
      <button className="small" data-testid={testId} onClick={onFetch}>
        Fetch
      </button>
    </>
  );
}

export function MissingPanel() {
  const { missing, missingModel } = useStudio();
  if (!missing.length && !missingModel) return null;
  return (
    <div className="error" role="alert" data-testid="missing-loras">
      This scene uses what is not in your library:
      <ul>
        {missingModel && (
          <li data-testid="missing-model">
            model {missingModel.name}
            <Source url={missingModel.url} onFetch={() => void startDownload(missingModel.url!)} testId="missing-model-fetch" />
          </li>
        )}
        {missing.map((l, i) => (
          <li key={l.name}>
            {l.name}
            <Source url={l.url} fingerprint={l.fingerprint} onFetch={() => void addLoraFromUrl(l.url!)} testId={`missing-lora-fetch-${i}`} />
          </li>
        ))}
      </ul>
      Add them (drop the files here, or fetch them) and they are used.
    </div>
  );
}
