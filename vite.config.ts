import { defineConfig } from 'vite';

// React's JSX comes through esbuild/oxc's automatic runtime; no plugin is needed for a build.
export default defineConfig({
  base: './',
  worker: { format: 'es' },
  optimizeDeps: { exclude: ['onnxruntime-web'] },
  build: { target: 'esnext', chunkSizeWarningLimit: 30000 },
  oxc: { jsx: { runtime: 'automatic' } },
  preview: { host: '127.0.0.1', port: 4173, strictPort: false },
});
