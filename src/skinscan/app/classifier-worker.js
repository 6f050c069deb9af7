// The screening engine, in a Web Worker so that the camera view never waits for the model.
//
// Loads the model once (fetch -> sha256 check against the package manifest -> one ONNX Runtime WASM
// session, reused for every frame), then answers `classify` messages: a camera VideoFrame or a photo's
// ImageBitmap in, the model's probabilities and timings out. Preprocessing is the Python runtime's resize
// rule (resize.js) on the frame's pixels at native resolution; the model input buffer and tensor are
// allocated once.

import * as ort from './vendor/onnxruntime-web/ort.wasm.min.mjs';
import { PillowResizer } from './resize.js';

let session = null;
let resizer = null;
let input = null; // Uint8Array, the model input [1, H, W, 3], reused
let tensor = null;
let inputName = 'image';
let outputName = 'probabilities';
// Plus 'cam' (the Grad-CAM map, docs/EXPLAIN.md) and 'assess' (the "cannot assess" scores) when the package has them.
let outputNames = ['probabilities'];
const CAM = 'cam';
const ASSESS = 'assess';
let canvas = null;
let context = null;
let frameBuffer = null; // camera frames' RGBA, reused

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function load({ modelUrl, sha256, preprocess, threads, input: inName, output: outName }) {
  const started = performance.now();
  const response = await fetch(modelUrl);
  if (!response.ok) throw new Error(`cannot download the model (${response.status} ${response.statusText})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const actual = hex(await crypto.subtle.digest('SHA-256', bytes));
  if (actual !== sha256) {
    const error = new Error(`The model file does not match its manifest (sha256 ${actual.slice(0, 12)}… ≠ ` +
      `${sha256.slice(0, 12)}…): it is corrupted or was modified, so it will not be used. ` +
      'Reinstall skinscan or re-export the model package.');
    error.kind = 'integrity';
    throw error;
  }
  const fetched = performance.now();

  // SIMD is always on in this build; threads need SharedArrayBuffer, i.e. a cross-origin isolated page.
  const cores = navigator.hardwareConcurrency || 1;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? (threads || Math.min(4, cores)) : 1;
  ort.env.wasm.wasmPaths = new URL('./vendor/onnxruntime-web/', import.meta.url).href;
  ort.env.logLevel = 'error';
  session = await ort.InferenceSession.create(bytes, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  inputName = inName || 'image';
  outputName = outName || 'probabilities';
  const hasCam = session.outputNames.includes(CAM);
  outputNames = [outputName, ...(hasCam ? [CAM] : []), ...(session.outputNames.includes(ASSESS) ? [ASSESS] : [])];
  const [height, width] = preprocess.size;
  resizer = new PillowResizer(preprocess.size, preprocess.resize);
  input = new Uint8Array(height * width * 3);
  tensor = new ort.Tensor('uint8', input, [1, height, width, 3]);
  await session.run({ [inputName]: tensor }, outputNames); // warm-up: first run allocates and plans
  return {
    hasCam,
    threads: ort.env.wasm.numThreads,
    crossOriginIsolated: self.crossOriginIsolated,
    downloadMs: fetched - started,
    sessionMs: performance.now() - fetched,
  };
}

/** An ImageBitmap's RGBA bytes at native resolution, composited on white (as Python does with alpha). */
function bitmapPixels(bitmap) {
  const { width, height } = bitmap;
  if (!canvas || canvas.width !== width || canvas.height !== height) {
    canvas = new OffscreenCanvas(width, height);
    context = canvas.getContext('2d', { willReadFrequently: true });
  }
  context.fillStyle = '#ffffff';
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, width, height).data;
}

/**
 * A camera VideoFrame's RGBA bytes, converted from the camera's YUV on the CPU straight into a buffer
 * that is reused from frame to frame (no GPU readback, no allocation). Browsers without RGBA copyTo
 * get the canvas route.
 */
async function videoFramePixels(frame) {
  const options = { format: 'RGBA', colorSpace: 'srgb' };
  try {
    const size = frame.allocationSize(options);
    if (!frameBuffer || frameBuffer.length !== size) frameBuffer = new Uint8Array(size);
    await frame.copyTo(frameBuffer, options);
    return frameBuffer;
  } catch {
    const bitmap = await createImageBitmap(frame);
    try {
      return bitmapPixels(bitmap);
    } finally {
      bitmap.close();
    }
  }
}

async function classify(image) {
  const t0 = performance.now();
  const isFrame = typeof VideoFrame === 'function' && image instanceof VideoFrame;
  const width = isFrame ? image.displayWidth : image.width;
  const height = isFrame ? image.displayHeight : image.height;
  let rgba;
  try {
    rgba = isFrame ? await videoFramePixels(image) : bitmapPixels(image);
  } finally {
    image.close();
  }
  const tRead = performance.now();
  resizer.resize(rgba, width, height, input);
  const t1 = performance.now();
  const outputs = await session.run({ [inputName]: tensor }, outputNames);
  const probabilities = outputs[outputName].data;
  const t2 = performance.now();
  const result = { probabilities: Array.from(probabilities), width, height, preprocessMs: t1 - t0,
    readMs: tRead - t0, inferenceMs: t2 - t1, cam: null, assess: outputs[ASSESS] ? Array.from(outputs[ASSESS].data) : null };
  const cam = outputs[CAM];
  if (cam) { // [1, h, w]: its h*w floats in a buffer of their own, transferred (not copied) to the page
    const [, h, w] = cam.dims;
    result.cam = { data: new Float32Array(cam.data.subarray(0, h * w)), h, w };
  }
  return result;
}

self.onmessage = async ({ data }) => {
  try {
    if (data.type === 'load') {
      self.postMessage({ type: 'loaded', id: data.id, ...(await load(data)) });
    } else if (data.type === 'classify') {
      const result = await classify(data.image);
      self.postMessage({ type: 'result', id: data.id, ...result }, result.cam ? [result.cam.data.buffer] : []);
    }
  } catch (error) {
    self.postMessage({ type: 'error', id: data.id, kind: error.kind || 'failure', message: String(error.message || error) });
  }
};
