// Installs what npm cannot: Debian's Chromium (the e2e browser, and the SwiftShader Vulkan driver
// that gives Node's Dawn a WebGPU adapter on machines without a GPU).
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export function ensureChromium() {
  if (existsSync('/usr/bin/chromium') && existsSync('/usr/lib/chromium/vk_swiftshader_icd.json')) return;
  console.log('Installing Debian chromium (needed once for WebGPU tests)...');
  const sudo = process.getuid && process.getuid() === 0 ? '' : 'sudo ';
  execSync(`${sudo}apt-get update -qq && ${sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium mesa-vulkan-drivers`, { stdio: 'inherit' });
}

if (import.meta.url === `file://${process.argv[1]}`) ensureChromium();
