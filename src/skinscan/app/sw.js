// Offline support: after the first visit the app, its WASM runtime and the model come from this cache.
//
// Network first, cache as the fallback: when the server is reachable the app is always the current one
// (revalidation is cheap: 304s, and the runtime is HTTP-cached for a week), and when it is not - phone in
// airplane mode, server stopped - everything still loads from the cache. The model is verified against
// its sha256 by the app after every load, wherever the bytes came from.

const CACHE = 'skinscan-v1';
const SHELL = [
  './', 'index.html', 'app.css', 'app.js', 'classifier-worker.js', 'resize.js', 'assess.js', 'diary.js',
  'diary-view.js', 'plain-words.js', 'manifest.webmanifest',
  'icons/icon-192.png', 'icons/icon-512.png',
  'vendor/onnxruntime-web/ort.wasm.min.mjs', 'vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs',
  'vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm',
  'model/metadata.json', 'model/manifest.json',
];

async function precache() {
  const cache = await caches.open(CACHE);
  await cache.addAll(SHELL);
  // The model file the app will use (named by the server's metadata), so that it is offline-ready too.
  const metadata = await (await cache.match('model/metadata.json')).json();
  await cache.add(`model/${metadata.files[metadata.default_precision]}`);
}

self.addEventListener('install', (event) => {
  event.waitUntil(precache().then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) {
      // Store only what changed: re-writing the 14 MB runtime and the model on every visit would be waste.
      const cached = await cache.match(request);
      const etag = response.headers.get('ETag');
      if (!cached || !etag || cached.headers.get('ETag') !== etag) await cache.put(request, response.clone());
    }
    return response;
  } catch (error) {
    const cached = await cache.match(request, { ignoreSearch: request.mode === 'navigate' });
    if (cached) return cached;
    throw error;
  }
}

// The page names the files it actually uses (e.g. the model of another precision, ?precision=int8),
// since on the very first visit its requests happen before this worker controls it.
self.addEventListener('message', (event) => {
  if (event.data?.type !== 'cache') return;
  const urls = event.data.urls.map((url) => new URL(url, self.location.href))
    .filter((url) => url.origin === self.location.origin);
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(urls)));
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  event.respondWith(networkFirst(event.request));
});
