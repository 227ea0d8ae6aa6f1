// WGSL kernels are imported as text: by Vite in the app, by scripts/wgsl-hooks.mjs under Node.
declare module '*.wgsl?raw' {
  const text: string;
  export default text;
}
