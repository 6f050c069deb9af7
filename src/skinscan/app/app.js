// The page: camera, photo picker, results in plain words, the report for the doctor, and (behind "Details")
// timings. The model runs in classifier-worker.js.
//
// One frame is in flight at a time (the worker is the bottleneck, so queueing frames would only add
// latency), and frames are taken at most `maxfps` times a second (default 15: smooth, and kind to a
// phone's battery). Every step is timed; `window.skinscan` exposes the state, the last result and the
// median timings, for the tests and benchmarks/app_frame_time.py.
//
// URL parameters (for measuring): ?precision=fp32|int8  ?threads=N  ?maxfps=N (0 = as fast as possible)

import { judge } from './assess.js';
import { PLAIN } from './plain-words.js';
import { centerCropBox } from './resize.js';
import { attachDiary } from './diary-view.js';

const params = new URLSearchParams(location.search);
const MAX_FPS = params.has('maxfps') ? Number(params.get('maxfps')) : 15;
const SAMPLES = 120; // timings kept for the medians
const MAX_PIXELS = 100_000_000; // as skinscan/runtime/preprocess.py
const MIN_SIDE = 16;

const $ = (id) => document.getElementById(id);
const view = {
  status: $('status'), video: $('camera'), photo: $('photo'), hint: $('hint'), result: $('result'),
  verdict: $('verdict'), top: $('top'), malignancy: $('malignancy'), error: $('error'), freeze: $('freeze'),
  gallery: $('gallery'), back: $('back'), stats: $('stats'), guide: document.querySelector('.guide'),
  explain: $('explain'), cam: $('cam'), legend: $('legend'), camnote: $('camnote'), report: $('report'),
  details: $('details'), detail: $('detail'), scores: $('scores'),
};

const state = {
  phase: 'loading', // loading | ready | error
  error: null,
  model: null, // metadata.json + the chosen file
  mode: 'camera', // camera | frozen | photo
  lastResult: null,
  photoResults: [],
  showCam: false, // "Show where it looked": the Grad-CAM overlay, off by default
  stats: { frames: 0, fps: 0, median: {}, samples: [], precision: null, threads: null, crossOriginIsolated,
    lastCam: null }, // lastCam: {h, w, max, source} of the map on the overlay
};
window.skinscan = state;
window.skinscanStats = state.stats;

const worker = new Worker(new URL('./classifier-worker.js', import.meta.url), { type: 'module' });
let nextId = 1;
const pending = new Map();

worker.onmessage = ({ data }) => {
  const request = pending.get(data.id);
  pending.delete(data.id);
  if (request) (data.type === 'error' ? request.reject : request.resolve)(data);
};

function ask(message, transfer = []) {
  const id = message.type === 'load' ? 'load' : nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ ...message, id }, transfer);
  });
}

// ------------------------------------------------------------------------------------------- model
async function fetchJson(url) {
  const response = await fetch(url, { cache: 'no-cache' });
  if (!response.ok) throw new Error(`cannot load ${url} (${response.status})`);
  return response.json();
}

async function loadModel() {
  const [metadata, manifest] = await Promise.all([fetchJson('model/metadata.json'), fetchJson('model/manifest.json')]);
  const precision = params.get('precision') || metadata.default_precision;
  const file = metadata.files[precision];
  if (!file) throw new Error(`this model package has no ${precision} model (it has: ${Object.keys(metadata.files)})`);
  const entry = manifest.files && manifest.files[file];
  if (!entry || !entry.sha256) throw new Error(`${file} is not listed in the package manifest; refusing to use it`);
  const loaded = await ask({
    type: 'load', modelUrl: `model/${file}`, sha256: entry.sha256, preprocess: metadata.preprocess,
    threads: Number(params.get('threads')) || 0, input: metadata.input, output: metadata.output,
  });
  state.model = { ...metadata, precision, file, hasCam: Boolean(loaded.hasCam) };
  Object.assign(state.stats, { precision, threads: loaded.threads, crossOriginIsolated: loaded.crossOriginIsolated,
    modelDownloadMs: loaded.downloadMs, sessionMs: loaded.sessionMs });
}

// ----------------------------------------------------------------------------------------- results
function interpret(probabilities, assess = null, width = 0, height = 0) {
  const { labels, label_names: names, malignant, thresholds } = state.model;
  const byCode = Object.fromEntries(labels.map((code, i) => [code, probabilities[i]]));
  const top = labels.map((code, i) => ({ code, name: names[code], probability: probabilities[i] }))
    .sort((a, b) => b.probability - a.probability).slice(0, 3);
  const malignantProbability = malignant.reduce((sum, code) => sum + byCode[code], 0);
  const verdict = judge(state.model.assess, assess, width, height);
  return {
    label: top[0].code, top, probabilities: byCode, malignantProbability,
    malignant: malignantProbability >= thresholds.malignant, cannotAssess: Boolean(verdict && verdict.reason),
    cannotAssessReason: verdict ? verdict.reason : null, cannotAssessMessage: verdict ? verdict.message : null,
    assessment: verdict ? verdict.scores : null,
  };
}

const percent = (p) => `${(100 * p).toFixed(p < 0.1 ? 1 : 0)}%`;
const rows = [];

/** The malignant diagnosis the model rates highest, by name: "the likely type" of a flagged result. */
function likelyCancer(result) {
  const code = state.model.malignant.reduce((best, c) => (result.probabilities[c] > result.probabilities[best] ? c
    : best));
  return state.model.label_names[code];
}

/** The headline and the line under it: what the user reads first. */
function plainWords(result) {
  if (result.cannotAssess) return [`Cannot assess this image: ${result.cannotAssessMessage}.`, PLAIN.noDiagnosis];
  if (result.malignant) return [PLAIN.flagged, `Most likely type of skin cancer: ${likelyCancer(result)}.`];
  return [PLAIN.notFlagged, 'The model\'s likeliest diagnoses:'];
}

function render(result) {
  if (rows.length === 0) {
    for (let i = 0; i < 3; i++) {
      const li = document.createElement('li');
      const name = document.createElement('span');
      const bar = document.createElement('span');
      const fill = document.createElement('span');
      const value = document.createElement('span');
      name.className = 'name'; bar.className = 'meter'; fill.className = 'fill'; value.className = 'value';
      bar.append(fill);
      li.append(name, bar, value);
      view.top.append(li);
      rows.push({ li, name, fill, value });
    }
  }
  // An image that cannot be assessed gets the reason and what to do: no diagnosis, percentage, bar, flag or map.
  view.top.hidden = result.cannotAssess;
  if (!result.cannotAssess) {
    result.top.forEach((entry, i) => {
      const row = rows[i];
      row.name.textContent = entry.name;
      row.value.textContent = percent(entry.probability);
      row.fill.style.width = `${(100 * entry.probability).toFixed(1)}%`;
      row.li.classList.toggle('malignant', state.model.malignant.includes(entry.code));
    });
  }
  view.result.hidden = false;
  view.result.classList.toggle('flagged', result.malignant && !result.cannotAssess);
  view.result.classList.toggle('unsure', result.cannotAssess);
  [view.verdict.textContent, view.malignancy.textContent] = plainWords(result);
  view.scores.textContent = developerLine(result);
  view.report.disabled = false;
}

/** Behind "Details": the numbers behind the answer (never a diagnosis for an image that cannot be assessed). */
function developerLine(result) {
  const gate = result.assessment ? Object.entries(result.assessment).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')
    : 'no gate in this package';
  if (result.cannotAssess) return `cannot assess (${result.cannotAssessReason}); gate scores: ${gate}`;
  const top = result.top.map((entry) => `${entry.code} ${percent(entry.probability)}`).join(', ');
  return `${top} · P(${state.model.malignant.join(' + ')}) = ${percent(result.malignantProbability)} (flagged at ≥ `
    + `${percent(state.model.thresholds.malignant)}) · gate scores: ${gate}`;
}

// -------------------------------------------------------------------------------- Grad-CAM overlay
// The model's `cam` output (docs/EXPLAIN.md) is an h x w map in [0, 1] over the model's input, i.e. the
// guide's box: it is written into an h x w canvas (one ImageData, reused) that CSS stretches over the box,
// which the browser upscales bilinearly. Colours: a jet-like ramp, transparent at low values, alpha <= 0.65
// (strong enough to read on a phone in daylight; the legend under the picture says what the colours mean).
const CAM_LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 4);
  const ramp = (x) => Math.max(0, Math.min(1, x));
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    lut[4 * i] = 255 * ramp(1.5 - Math.abs(4 * v - 3));
    lut[4 * i + 1] = 255 * ramp(1.5 - Math.abs(4 * v - 2));
    lut[4 * i + 2] = 255 * ramp(1.5 - Math.abs(4 * v - 1));
    lut[4 * i + 3] = 255 * 0.65 * ramp((v - 0.15) / 0.25);
  }
  return lut;
})();
const camContext = view.cam.getContext('2d');
let camImage = null; // ImageData, reused while the map's size stays the same
let camShown = null; // the result whose map is on the overlay

/** "Show where it looked" is off, with the reason on screen, for an image that cannot be assessed. */
function updateExplain(result) {
  const blocked = Boolean(result && result.cannotAssess);
  const hasCam = Boolean(state.model && state.model.hasCam);
  if (state.phase === 'error') return;
  view.explain.disabled = !hasCam || blocked;
  if (hasCam) view.explain.title = blocked ? PLAIN.noMap : EXPLAIN_TITLE;
  view.camnote.textContent = PLAIN.noMap;
  view.camnote.hidden = !blocked || !hasCam;
}

const EXPLAIN_TITLE = 'Overlay the heat map: where the evidence for the likeliest diagnosis lies';

function drawCam(result) {
  updateExplain(result);
  camShown = result && result.cam && !result.cannotAssess ? result : null;
  if (!state.showCam || !camShown) {
    view.cam.hidden = true;
    view.legend.hidden = true;
    return;
  }
  const { h, w } = camShown.cam;
  if (view.cam.width !== w || view.cam.height !== h) Object.assign(view.cam, { width: w, height: h });
  if (!camImage || camImage.width !== w || camImage.height !== h) camImage = camContext.createImageData(w, h);
  const max = paintCam(camShown.cam, camImage);
  camContext.putImageData(camImage, 0, 0);
  const last = state.stats.lastCam || (state.stats.lastCam = { h: 0, w: 0, max: 0, source: null });
  last.h = h; last.w = w; last.max = max; last.source = camShown.source;
  view.cam.hidden = false;
  view.legend.hidden = false;
}

/** Colour a map ({data, h, w} in [0, 1]) into an ImageData of its size with CAM_LUT; returns its maximum. */
function paintCam({ data, h, w }, image) {
  const pixels = image.data;
  let max = 0;
  for (let i = 0; i < h * w; i++) {
    const v = data[i] > 0 ? (data[i] < 1 ? data[i] : 1) : 0;
    if (v > max) max = v;
    const at = 4 * Math.round(255 * v);
    pixels[4 * i] = CAM_LUT[at];
    pixels[4 * i + 1] = CAM_LUT[at + 1];
    pixels[4 * i + 2] = CAM_LUT[at + 2];
    pixels[4 * i + 3] = CAM_LUT[at + 3];
  }
  return max;
}

function toggleCam() {
  state.showCam = !state.showCam;
  view.explain.setAttribute('aria-pressed', String(state.showCam));
  drawCam(state.showCam ? state.lastResult : null);
}

/** Place the dashed guide (and the Grad-CAM overlay) on exactly the part of the picture the model sees. */
function placeGuide() {
  const element = state.mode === 'photo' ? view.photo : view.video;
  const width = element.videoWidth || element.naturalWidth;
  const height = element.videoHeight || element.naturalHeight;
  if (!state.model || !width || !height) return;
  const [inputHeight, inputWidth] = state.model.preprocess.size;
  const box = state.model.preprocess.resize === 'center_crop'
    ? centerCropBox(width, height, inputHeight, inputWidth) : [0, 0, width, height];
  const scale = Math.min(element.clientWidth / width, element.clientHeight / height); // object-fit: contain
  const left = (element.clientWidth - width * scale) / 2;
  const top = (element.clientHeight - height * scale) / 2;
  const placement = {
    left: `${left + box[0] * scale}px`, top: `${top + box[1] * scale}px`,
    width: `${(box[2] - box[0]) * scale}px`, height: `${(box[3] - box[1]) * scale}px`,
  };
  Object.assign(view.guide.style, placement);
  Object.assign(view.cam.style, placement);
}

// ------------------------------------------------------------------------------ report for the doctor
// One A4 page (1240 x 1754 px, 150 dpi) drawn on a canvas, as skinscan/runtime/doctor_report.py draws it for
// `skinscan predict --report`: the picture the model saw, the heat map beside it with its legend, the answer in
// plain words (or why the image cannot be assessed, and then no diagnosis and no map), the date, the model
// version and the disclaimer. It is made here and saved where the user chooses; nothing is sent anywhere.
const PAGE = { width: 1240, height: 1754, margin: 80 };
const INK = '#14232a';
const MUTED = '#5a696e';

/** Lines of at most `width` px for `text` in the context's current font. */
function wrapText(context, text, width) {
  const lines = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    const candidate = line ? `${line} ${word}` : word;
    if (line && context.measureText(candidate).width > width) {
      lines.push(line);
      line = word;
    } else {
      line = candidate;
    }
  }
  return line ? [...lines, line] : lines;
}

function drawReport(result) {
  const canvas = document.createElement('canvas');
  Object.assign(canvas, { width: PAGE.width, height: PAGE.height });
  const context = canvas.getContext('2d');
  context.fillStyle = '#ffffff';
  context.fillRect(0, 0, PAGE.width, PAGE.height);
  context.textBaseline = 'top';
  const width = PAGE.width - 2 * PAGE.margin;
  let y = PAGE.margin;
  const text = (content, size, colour = INK, gap = 10, weight = '') => {
    context.font = `${weight} ${size}px system-ui, sans-serif`;
    context.fillStyle = colour;
    for (const line of wrapText(context, content, width)) {
      context.fillText(line, PAGE.margin, y);
      y += Math.round(size * 1.25);
    }
    y += gap;
  };
  const now = new Date();
  text('Skin lesion screening report', 52, INK, 6, '600');
  text('For your doctor. Made on this device by skinscan; the photo was not sent anywhere.', 26, MUTED, 4);
  text(`Date: ${now.toLocaleDateString()} ${now.toLocaleTimeString()}    Image: ${result.source}`, 26, MUTED, 4);
  text(`Model: skinscan ${state.model.version || 'unknown version'} (${state.model.precision})`, 26, MUTED, 24);
  context.fillStyle = '#c8cdd0';
  context.fillRect(PAGE.margin, y, width, 3);
  y += 30;

  // The picture the model saw (the guide's box of the photo or the frozen frame), and beside it the heat map.
  const element = state.mode === 'photo' ? view.photo : view.video;
  const sourceWidth = element.videoWidth || element.naturalWidth;
  const sourceHeight = element.videoHeight || element.naturalHeight;
  const [inputHeight, inputWidth] = state.model.preprocess.size;
  const box = state.model.preprocess.resize === 'center_crop'
    ? centerCropBox(sourceWidth, sourceHeight, inputHeight, inputWidth) : [0, 0, sourceWidth, sourceHeight];
  const boxWidth = (width - 40) / 2;
  const boxHeight = Math.round(boxWidth * inputHeight / inputWidth);
  const right = PAGE.margin + boxWidth + 40;
  const picture = (x) => context.drawImage(element, box[0], box[1], box[2] - box[0], box[3] - box[1], x, y, boxWidth,
    boxHeight);
  picture(PAGE.margin);
  context.font = '24px system-ui, sans-serif';
  context.fillStyle = MUTED;
  context.fillText('The photo (as the model saw it)', PAGE.margin, y + boxHeight + 8);
  if (!result.cannotAssess && result.cam) {
    picture(right);
    const map = new OffscreenCanvas(result.cam.w, result.cam.h);
    const mapContext = map.getContext('2d');
    const image = mapContext.createImageData(result.cam.w, result.cam.h);
    paintCam(result.cam, image);
    mapContext.putImageData(image, 0, 0);
    context.imageSmoothingEnabled = true;
    context.drawImage(map, right, y, boxWidth, boxHeight); // upscaled bilinearly, as on screen
    context.fillStyle = MUTED;
    context.fillText('Where the model looked', right, y + boxHeight + 8);
    const ramp = context.createLinearGradient(right, 0, right + boxWidth, 0);
    for (let i = 0; i <= 8; i++) {
      const at = 4 * Math.round(255 * (i / 8));
      ramp.addColorStop(i / 8, `rgb(${CAM_LUT[at]}, ${CAM_LUT[at + 1]}, ${CAM_LUT[at + 2]})`);
    }
    context.fillStyle = ramp;
    context.fillRect(right, y + boxHeight + 44, boxWidth, 22);
    context.fillStyle = MUTED;
    context.fillText('blue: where it looked least', right, y + boxHeight + 72);
    context.textAlign = 'right';
    context.fillText('red: where the model looked most', right + boxWidth, y + boxHeight + 100);
    context.textAlign = 'left';
  } else {
    context.strokeStyle = '#c8cdd0';
    context.lineWidth = 3;
    context.strokeRect(right, y, boxWidth, boxHeight);
    const why = result.cannotAssess ? PLAIN.noMap : 'No heat map: this model package has no explanation output.';
    wrapText(context, why, boxWidth - 40).forEach((line, i) => context.fillText(line, right + 20, y + 20 + 32 * i));
  }
  y += boxHeight + 150;

  const [headline, subline] = plainWords(result);
  text(headline, 38, result.cannotAssess ? '#8a6500' : result.malignant ? '#be3c14' : INK, 16, '600');
  text(subline, 30, INK, 4);
  if (!result.cannotAssess) {
    result.top.forEach((entry, i) => text(`${i + 1}. ${entry.name}: ${percent(entry.probability)}`, 30, INK, 4));
  }

  // The disclaimer, boxed at the foot of the page.
  context.font = '28px system-ui, sans-serif';
  const footer = wrapText(context, document.querySelector('.disclaimer').textContent.trim(), width - 40);
  const top = PAGE.height - PAGE.margin - 36 * footer.length - 30;
  context.strokeStyle = '#be3c14';
  context.lineWidth = 3;
  context.strokeRect(PAGE.margin, top, width, PAGE.height - PAGE.margin - top);
  context.fillStyle = INK;
  footer.forEach((line, i) => context.fillText(line, PAGE.margin + 20, top + 15 + 36 * i));
  return canvas;
}

/** Save `blob` where the user chooses: the file picker where the browser has one, else a download. */
async function offerDownload(blob, name) {
  if (typeof window.showSaveFilePicker === 'function') {
    try {
      const handle = await window.showSaveFilePicker({ suggestedName: name,
        types: [{ description: 'PNG image', accept: { 'image/png': ['.png'] } }] });
      const writable = await handle.createWritable();
      await writable.write(blob);
      await writable.close();
      return 'picker';
    } catch (error) {
      if (error.name === 'AbortError') return 'cancelled';
      // e.g. no user activation left after freezing the frame: fall back to a download
    }
  }
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement('a'), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return 'download';
}

/** "Report for my doctor": of the photo or the frozen frame (a live camera view is frozen first). */
async function makeReport() {
  if (state.mode === 'camera') await freeze();
  const result = state.lastResult;
  if (!result) return;
  const canvas = drawReport(result);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  const stamp = new Date().toISOString().slice(0, 16).replace(/[:T]/g, '-');
  const name = `skinscan-report-${stamp}.png`;
  const how = await offerDownload(blob, name);
  state.lastReport = { name, bytes: blob.size, width: canvas.width, height: canvas.height, how };
}

// ------------------------------------------------------------------------------------------ timings
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function record(sample) {
  const stats = state.stats;
  stats.samples.push(sample);
  if (stats.samples.length > SAMPLES) stats.samples.shift();
  stats.frames += 1;
  stats.last = sample;
  for (const key of ['capture', 'read', 'preprocess', 'inference', 'messaging', 'render', 'total']) {
    stats.median[key] = median(stats.samples.map((s) => s[key]));
  }
  const span = (sample.end - stats.samples[0].end) / 1000;
  stats.fps = stats.samples.length > 1 && span > 0 ? (stats.samples.length - 1) / span : 0;
  const m = stats.median;
  view.stats.textContent = `${stats.precision} · ${stats.threads} thread${stats.threads > 1 ? 's' : ''} · ` +
    `${m.total.toFixed(1)} ms/frame (capture+preprocess ${(m.capture + m.preprocess).toFixed(1)}, ` +
    `model ${m.inference.toFixed(1)}, render ${m.render.toFixed(1)}) · ${stats.fps.toFixed(0)} fps`;
}

state.resetStats = () => Object.assign(state.stats, { frames: 0, fps: 0, median: {}, samples: [] });

// --------------------------------------------------------------------------------------- screening
let queue = Promise.resolve(); // one classification at a time: the worker's session runs one at a time

/** The current camera frame: a VideoFrame (no copy; the worker converts it) where supported. */
function grabVideo(video) {
  return typeof VideoFrame === 'function' ? new VideoFrame(video) : createImageBitmap(video);
}

/**
 * Refuse, before decoding a pixel, what Pillow refuses in skinscan/runtime/preprocess.py: a size outside the limits
 * (read from the header by a detached <img>, which does not decode the pixels: a decompression bomb stays a
 * few kB) and a JPEG cut short (no end-of-image marker: browsers would paint the missing part grey and the
 * model would screen half a photo).
 */
async function checkPhoto(file) {
  const url = URL.createObjectURL(file);
  let width; let height;
  try {
    const probe = new Image();
    probe.src = url;
    await new Promise((resolve, reject) => {
      probe.onload = resolve;
      probe.onerror = () => reject(new Error('this is not an image the browser can read (JPEG, PNG, WebP, ...)'));
    });
    [width, height] = [probe.naturalWidth, probe.naturalHeight];
  } finally {
    URL.revokeObjectURL(url);
  }
  if (Math.min(width, height) < MIN_SIDE || width * height > MAX_PIXELS) {
    throw new Error(`the image is ${width}x${height}: use a photo at least ${MIN_SIDE}x${MIN_SIDE} and at most 100 MP`);
  }
  const head = new Uint8Array(await file.slice(0, 2).arrayBuffer());
  if (head[0] === 0xff && head[1] === 0xd8) {
    const tail = new Uint8Array(await file.slice(Math.max(0, file.size - 4096)).arrayBuffer());
    const ends = tail.some((byte, i) => byte === 0xff && tail[i + 1] === 0xd9);
    if (!ends) throw new Error('the JPEG is truncated or damaged (no end-of-image marker); re-export or re-take it');
  }
}

/** A photo decoded as Pillow decodes it: its own pixels, upright per EXIF, no colour-profile conversion.
 * Its size was checked from the header by `checkPhoto`, before this decodes it. */
function decodePhoto(file) {
  return createImageBitmap(file, { imageOrientation: 'from-image', colorSpaceConversion: 'none',
    premultiplyAlpha: 'none' });
}

/** Capture (`grab` returns a VideoFrame or ImageBitmap) and classify in the worker; renders nothing. */
function screen(grab, label) {
  const run = queue.then(async () => {
    const t0 = performance.now();
    const image = await grab();
    const t1 = performance.now();
    const reply = await ask({ type: 'classify', image }, [image]);
    const t2 = performance.now();
    const timings = {
      start: t0, capture: t1 - t0, read: reply.readMs, preprocess: reply.preprocessMs, inference: reply.inferenceMs,
      messaging: t2 - t1 - reply.preprocessMs - reply.inferenceMs, received: t2,
    };
    return { source: label, ...interpret(reply.probabilities, reply.assess, reply.width, reply.height),
      width: reply.width, height: reply.height,
      cam: reply.cam, timings };
  });
  queue = run.catch(() => {});
  return run;
}

/** Render a result and complete its timings (render, end-to-end). */
function show(result) {
  render(result);
  drawCam(result);
  const end = performance.now();
  Object.assign(result.timings, { render: end - result.timings.received, total: end - result.timings.start, end });
  state.lastResult = result;
  return result;
}

let loopRunning = false;
let lastFrameStart = 0;

// Camera frames presented so far, counted with requestVideoFrameCallback, so that the loop takes a frame
// that arrived while the previous one was being classified at once, and never classifies a frame twice.
const countsFrames = 'requestVideoFrameCallback' in HTMLVideoElement.prototype;
let framesPresented = 0;
let frameWaiter = null;

function onVideoFrame() {
  framesPresented += 1;
  if (frameWaiter) frameWaiter();
  frameWaiter = null;
  view.video.requestVideoFrameCallback(onVideoFrame);
}

function frameAfter(seen) {
  if (!countsFrames) return new Promise((resolve) => requestAnimationFrame(resolve));
  return framesPresented > seen ? Promise.resolve() : new Promise((resolve) => { frameWaiter = resolve; });
}

async function cameraLoop() {
  if (loopRunning) return; // a paused loop waiting for a frame carries on when the video plays again
  loopRunning = true;
  let seen = framesPresented;
  try {
    while (state.mode === 'camera') {
      await frameAfter(seen);
      const wait = MAX_FPS > 0 ? lastFrameStart + 1000 / MAX_FPS - performance.now() : 0;
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      if (state.mode !== 'camera' || view.video.readyState < 2) continue;
      seen = framesPresented;
      lastFrameStart = performance.now();
      const result = await screen(() => grabVideo(view.video), 'camera');
      if (state.mode !== 'camera') continue; // frozen or a photo picked meanwhile: that result wins
      record(show(result).timings);
    }
  } catch (error) {
    fail(error);
  } finally {
    loopRunning = false;
  }
}

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    view.hint.textContent = 'No camera access in this browser: pick a dermoscopic photo instead.';
    return;
  }
  try {
    // 640x480 is 2.3x the model's input: plenty for its antialiased resize, and it keeps preprocessing cheap.
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: { ideal: 'environment' }, width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
    });
    view.video.srcObject = stream;
    if (countsFrames) view.video.requestVideoFrameCallback(onVideoFrame);
    await view.video.play();
    view.freeze.disabled = false;
    cameraLoop();
  } catch (error) {
    view.hint.textContent = `Camera unavailable (${error.name || error.message}): pick a dermoscopic photo instead.`;
  }
}

function setMode(mode) {
  state.mode = mode;
  const photo = mode === 'photo';
  view.photo.hidden = !photo;
  view.video.hidden = photo;
  view.back.hidden = !photo;
  view.freeze.hidden = photo;
  view.freeze.textContent = mode === 'frozen' ? 'Resume' : 'Freeze';
  view.hint.hidden = mode !== 'camera';
  drawCam(null); // the map of the picture on screen only: the next result brings its own
  placeGuide();
  if (mode === 'camera' && view.video.srcObject) {
    view.video.play().then(cameraLoop, fail);
  } else {
    view.video.pause();
  }
}

async function freeze() {
  if (state.mode !== 'camera') return setMode('camera');
  setMode('frozen');
  show(await screen(() => grabVideo(view.video), 'frozen')); // the paused frame on screen is the one screened
}

async function pickPhoto() {
  const file = view.gallery.files[0];
  view.gallery.value = '';
  if (!file) return;
  try {
    await checkPhoto(file); // before the photo is shown: showing it would decode it
    setMode('photo');
    if (view.photo.src) URL.revokeObjectURL(view.photo.src);
    view.photo.src = URL.createObjectURL(file);
    const result = show(await screen(() => decodePhoto(file), file.name));
    state.photoResults.push(result);
    view.error.hidden = true;
  } catch (error) {
    const message = error.message || String(error);
    state.photoResults.push({ source: file.name, error: message }); // every upload has an outcome
    showError(`Cannot screen ${file.name}: ${message}`);
  }
}

// ---------------------------------------------------------------------------------------- plumbing
function showError(message) {
  view.error.textContent = message;
  view.error.hidden = false;
}

function fail(error) {
  state.phase = 'error';
  state.error = { kind: error.kind || 'failure', message: String(error.message || error) };
  view.status.textContent = error.kind === 'integrity' ? 'Model refused' : 'Not working';
  showError(state.error.message);
  view.freeze.disabled = true;
  view.gallery.disabled = true;
  view.explain.disabled = true;
  view.report.disabled = true;
}

async function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return;
  try {
    await navigator.serviceWorker.register('sw.js');
  } catch (error) {
    console.warn('no offline support:', error);
  }
}

/** Make sure the model this page runs is in the offline cache too (see sw.js). */
async function keepModelOffline(file) {
  if (!('serviceWorker' in navigator)) return;
  const registration = await navigator.serviceWorker.ready;
  registration.active.postMessage({ type: 'cache', urls: [`model/${file}`] });
}

/** The lesion diary (diary-view.js) saves what is screened on screen: the frozen frame or the picked photo. */
function screenedNow() {
  const result = state.lastResult;
  const current = (state.mode === 'frozen' && result?.source === 'frozen')
    || (state.mode === 'photo' && result && result === state.photoResults.at(-1));
  return current ? { result, model: state.model, image: state.mode === 'photo' ? view.photo : view.video } : null;
}

async function main() {
  attachDiary({ screened: screenedNow });
  view.freeze.addEventListener('click', () => freeze().catch(fail));
  view.back.addEventListener('click', () => setMode('camera'));
  view.explain.addEventListener('click', toggleCam);
  view.details.addEventListener('change', () => { view.detail.hidden = !view.details.checked; });
  view.report.addEventListener('click', () => makeReport().catch((error) => showError(`No report: ${error.message}`)));
  view.gallery.addEventListener('change', pickPhoto);
  for (const [target, event] of [[view.video, 'resize'], [view.photo, 'load'], [window, 'resize']]) {
    target.addEventListener(event, placeGuide);
  }
  registerServiceWorker();
  try {
    await loadModel();
  } catch (error) {
    fail(error);
    return;
  }
  state.phase = 'ready';
  view.explain.disabled = !state.model.hasCam;
  view.explain.title = state.model.hasCam ? EXPLAIN_TITLE
    : 'This model package has no explanation output (cam): re-export it to get the map';
  placeGuide();
  keepModelOffline(state.model.file).catch((error) => console.warn('model not cached for offline use:', error));
  view.status.textContent = 'Ready · runs on this device';
  startCamera();
}

main();
