import { defineConfig, type Plugin } from 'vite';
import { VitePWA } from 'vite-plugin-pwa';

/**
 * The built app's Content-Security-Policy. Scripts, workers and wasm come only from the app itself
 * (no inline script; wasm compiles under 'wasm-unsafe-eval', which allows no JavaScript eval); images
 * may be data: and blob: URLs (results, thumbnails); the only other connections allowed are https
 * downloads, which the app makes only when the artist asks for a model, a LoRA or the scorer.
 * The dev server is left without it (its hot reload injects inline scripts).
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "worker-src 'self'",
  "connect-src 'self' https: data: blob:",
  "img-src 'self' data: blob:",
  "style-src 'self'",
  "font-src 'self'",
  "manifest-src 'self'",
  "object-src 'none'",
  "base-uri 'self'",
  "form-action 'none'",
].join('; ');

function contentSecurityPolicy(): Plugin {
  return {
    name: 'lora-studio-csp',
    apply: 'build',
    transformIndexHtml: () => [{ tag: 'meta', attrs: { 'http-equiv': 'Content-Security-Policy', content: CONTENT_SECURITY_POLICY }, injectTo: 'head-prepend' }],
  };
}

// React's JSX comes through esbuild/oxc's automatic runtime; no plugin is needed for a build.
// The service worker (Workbox, through vite-plugin-pwa) precaches the app shell, the engine worker,
// onnxruntime's wasm, the tokenizer and the embedded test model: after one visit the studio opens
// and generates with no network. Models and LoRAs the artist adds live in the OPFS, not in this cache.
export default defineConfig({
  base: './',
  worker: { format: 'es' },
  optimizeDeps: { exclude: ['onnxruntime-web'] },
  build: { target: 'esnext', chunkSizeWarningLimit: 30000 },
  oxc: { jsx: { runtime: 'automatic' } },
  preview: { host: '127.0.0.1', port: 4173, strictPort: false },
  plugins: [
    contentSecurityPolicy(),
    VitePWA({
      registerType: 'prompt',
      injectRegister: false, // registered by src/app/offline.ts after the first model load
      manifest: {
        name: 'LoRA Studio',
        short_name: 'LoRA Studio',
        description: 'Compose several LoRAs in one Stable Diffusion 1.5 image, in boxes you draw, on your own GPU.',
        start_url: './',
        scope: './',
        display: 'standalone',
        background_color: '#f6f6f4',
        theme_color: '#1d1f24',
        icons: [
          { src: 'icons/icon-192.png', sizes: '192x192', type: 'image/png' },
          { src: 'icons/icon-512.png', sizes: '512x512', type: 'image/png' },
          { src: 'icons/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
        ],
      },
      workbox: {
        globPatterns: ['**/*.{js,mjs,css,html,wasm,json,txt,safetensors,onnx,png,svg,webmanifest}'],
        maximumFileSizeToCacheInBytes: 64 * 1024 * 1024,
        navigateFallback: 'index.html',
        cleanupOutdatedCaches: true,
      },
    }),
  ],
});
