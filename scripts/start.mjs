// `npm start`: build the studio (with the tiny test model embedded) if needed, then serve it on
// localhost. Everything it needs is local, so it works offline.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

if (!existsSync('dist/index.html') || !existsSync('dist/test-model/tiny-sd15.safetensors') || process.argv.includes('--build')) {
  const r = spawnSync('npm', ['run', 'build', '--silent'], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const port = process.env.PORT ?? '4173';
console.log(`LoRA Studio: http://127.0.0.1:${port}/`);
spawnSync(process.execPath, ['node_modules/vite/bin/vite.js', 'preview', '--port', port, '--host', '127.0.0.1'], { stdio: 'inherit' });
