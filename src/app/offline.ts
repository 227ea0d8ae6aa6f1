/// <reference types="vite-plugin-pwa/vanillajs" />
/// <reference types="vite/client" />
// The offline service worker (dist/sw.js, Workbox's precache of the shell, the engine worker,
// onnxruntime's wasm and the embedded test model). It is registered after the first model load so
// the 34 MB precache does not compete with it. A new version waits until the artist chooses to reload:
// an automatic reload could interrupt a run.
import { registerSW } from 'virtual:pwa-register';
import { useStudio } from '../store/studio.ts';

export function registerOffline(): void {
  if (!('serviceWorker' in navigator) || !import.meta.env.PROD) return;
  const update = registerSW({
    immediate: true,
    onOfflineReady: () => useStudio.getState().set({ offline: 'ready' }),
    onNeedRefresh: () => useStudio.getState().set({ offline: 'update', applyUpdate: () => void update(true) }),
    onRegisterError: (e: unknown) => useStudio.getState().set({ offline: 'failed', notice: `The studio could not be made available offline: ${(e as Error)?.message ?? e}.` }),
  });
  // an installed worker from an earlier visit already serves the page
  if (navigator.serviceWorker.controller) useStudio.getState().set({ offline: 'ready' });
}
