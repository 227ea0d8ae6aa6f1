// An RGBA image from the engine on a canvas (hidden until there is one).
import { useEffect, useRef } from 'react';
import type { ImageData8 } from '../../workers/api/contract.ts';

export function ImageCanvas({ image, label, testId }: { image?: ImageData8; label: string; testId?: string }) {
  const ref = useRef<HTMLCanvasElement>(null);
  useEffect(() => {
    const c = ref.current;
    if (!c || !image) return;
    c.width = image.width;
    c.height = image.height;
    c.getContext('2d')!.putImageData(new ImageData(new Uint8ClampedArray(image.data), image.width, image.height), 0, 0);
  }, [image]);
  return <canvas ref={ref} className="image" aria-label={label} data-testid={testId} hidden={!image} />;
}
