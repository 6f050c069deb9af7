// The model's resize rule, bit-exact with the Python runtime (skinscan/runtime/preprocess.py::resize_to_input).
//
// Python does `image.resize((W, H), Image.BILINEAR, box=crop_box)`. Pillow's BILINEAR is not the
// 2x2-tap bilinear of a GPU or of canvas smoothing: when shrinking it is a triangle filter whose support
// grows with the reduction factor (an antialiasing filter), run separably in 22-bit fixed point with the
// intermediate image rounded to 8 bits. This file is a straight port of Pillow 13's libImaging/Resample.c
// (precompute_coeffs, normalize_coeffs_8bpc, ImagingResampleInner, including its choice of which pass
// goes first and its float32 box), so the browser feeds the model the very same bytes as Python when it
// starts from the same pixels (tests/test_app.py checks it byte for byte against the installed Pillow).
//
// Allocation-free per frame: filter tables and the intermediate buffer are kept and only rebuilt when
// the source size changes.

const PRECISION_BITS = 32 - 8 - 2;
const HALF = 1 << (PRECISION_BITS - 1);
const ONE = 1 << PRECISION_BITS;

/** The centred (left, top, right, bottom) box with the aspect ratio of (height, width); as Python's. */
export function centerCropBox(imageWidth, imageHeight, height, width) {
  const scale = Math.min(imageWidth / width, imageHeight / height);
  const cropWidth = Math.min(imageWidth, width * scale);
  const cropHeight = Math.min(imageHeight, height * scale);
  const left = Math.max(0.0, (imageWidth - cropWidth) / 2);
  const top = Math.max(0.0, (imageHeight - cropHeight) / 2);
  return [left, top, left + cropWidth, top + cropHeight];
}

function bilinear(x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: integer taps per output pixel. */
function coefficients(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale; // BILINEAR's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const taps = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterScale;
    let xmin = Math.trunc(center - support + 0.5); // C's (int) cast truncates
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * ss);
      taps[x] = w;
      total += w;
    }
    for (let x = 0; x < ksize; x++) {
      const w = x < xmax && total !== 0.0 ? taps[x] / total : 0.0;
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, weights, bounds };
}

function clamp8(value) {
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

// The sums fit in int32 (taps are non-negative and add up to ONE), so `| 0` and Math.imul keep V8 on
// integer arithmetic; `>> PRECISION_BITS` then clamping is Pillow's clip8.

/** Horizontal pass: `rows` source rows from `firstRow` (src has `channels` bytes a pixel) -> dst RGB. */
function horizontalPass(src, channels, srcWidth, firstRow, rows, { ksize, weights, bounds }, dst, outWidth) {
  for (let y = 0; y < rows; y++) {
    const rowStart = (y + firstRow) * srcWidth * channels;
    let o = y * outWidth * 3;
    for (let xx = 0; xx < outWidth; xx++, o += 3) {
      const xmax = bounds[xx * 2 + 1];
      const k = xx * ksize;
      let r = HALF, g = HALF, b = HALF;
      let s = rowStart + bounds[xx * 2] * channels;
      for (let x = 0; x < xmax; x++, s += channels) {
        const w = weights[k + x];
        r = (r + Math.imul(src[s], w)) | 0;
        g = (g + Math.imul(src[s + 1], w)) | 0;
        b = (b + Math.imul(src[s + 2], w)) | 0;
      }
      dst[o] = clamp8(r >> PRECISION_BITS);
      dst[o + 1] = clamp8(g >> PRECISION_BITS);
      dst[o + 2] = clamp8(b >> PRECISION_BITS);
    }
  }
}

/** Vertical pass: every column of src (`width` wide) -> dst RGB; tap rows are `bounds - rowShift`. */
function verticalPass(src, channels, width, rowShift, { ksize, weights, bounds }, dst, outHeight) {
  const srcRow = width * channels;
  for (let yy = 0; yy < outHeight; yy++) {
    const start = (bounds[yy * 2] - rowShift) * srcRow;
    const ymax = bounds[yy * 2 + 1];
    const k = yy * ksize;
    let o = yy * width * 3;
    for (let x = 0; x < width; x++, o += 3) {
      let r = HALF, g = HALF, b = HALF;
      let s = start + x * channels;
      for (let y = 0; y < ymax; y++, s += srcRow) {
        const w = weights[k + y];
        r = (r + Math.imul(src[s], w)) | 0;
        g = (g + Math.imul(src[s + 1], w)) | 0;
        b = (b + Math.imul(src[s + 2], w)) | 0;
      }
      dst[o] = clamp8(r >> PRECISION_BITS);
      dst[o + 1] = clamp8(g >> PRECISION_BITS);
      dst[o + 2] = clamp8(b >> PRECISION_BITS);
    }
  }
}

/** No resampling on either axis: the pixels, as RGB. */
function copyRGB(src, channels, pixels, dst) {
  for (let i = 0, s = 0, o = 0; i < pixels; i++, s += channels, o += 3) {
    dst[o] = src[s]; dst[o + 1] = src[s + 1]; dst[o + 2] = src[s + 2];
  }
}

/**
 * A reusable resizer for one model input: `resize(rgba, width, height, out)` writes the model's
 * H x W x 3 uint8 input (RGB, row-major, NHWC without the batch axis) into `out`.
 * `rgba` is the source's RGBA bytes (e.g. ImageData.data), row-major, `width` x `height`.
 */
export class PillowResizer {
  constructor(size, rule) {
    if (rule !== 'center_crop' && rule !== 'stretch') throw new Error(`unknown resize rule ${rule}`);
    [this.height, this.width] = size;
    this.rule = rule;
    this.sourceKey = '';
  }

  /** The box of the source that is scaled to the model input (all of it for "stretch"). */
  box(width, height) {
    return this.rule === 'center_crop'
      ? centerCropBox(width, height, this.height, this.width)
      : [0, 0, width, height];
  }

  /** Filter tables and the intermediate buffer for one source size (kept until the size changes). */
  prepare(width, height) {
    const key = `${width}x${height}`;
    if (key === this.sourceKey) return;
    // Pillow hands the box to C as float32 (`float box[4]`): round it the same way.
    const [left, top, right, bottom] = this.box(width, height).map(Math.fround);
    this.needHorizontal = this.width !== width || left !== 0 || right !== this.width;
    this.needVertical = this.height !== height || top !== 0 || bottom !== this.height;
    // Pillow 13: if the height shrinks more than twice as much as the width, the vertical pass goes first.
    this.horizontalFirst = !(height - this.height > 0 && height - this.height > (width - this.width) * 2);
    this.horizontal = coefficients(width, left, right, this.width);
    this.vertical = coefficients(height, top, bottom, this.height);
    if (this.horizontalFirst) {
      // Only the source rows the vertical pass reads go through the horizontal pass.
      const bounds = this.vertical.bounds;
      this.firstRow = bounds[0];
      this.rows = bounds[this.height * 2 - 2] + bounds[this.height * 2 - 1] - this.firstRow;
      this.temp = new Uint8Array(this.width * this.rows * 3);
    } else {
      this.temp = new Uint8Array(width * this.height * 3);
    }
    this.sourceKey = key;
  }

  resize(rgba, width, height, out) {
    this.prepare(width, height);
    const { needHorizontal, needVertical, temp } = this;
    if (this.horizontalFirst) {
      if (needHorizontal) {
        horizontalPass(rgba, 4, width, this.firstRow, this.rows, this.horizontal, temp, this.width);
        if (needVertical) verticalPass(temp, 3, this.width, this.firstRow, this.vertical, out, this.height);
        else out.set(temp.subarray(0, out.length)); // identity vertical: temp holds all rows
      } else if (needVertical) {
        verticalPass(rgba, 4, width, 0, this.vertical, out, this.height);
      } else {
        copyRGB(rgba, 4, width * height, out);
      }
    } else {
      verticalPass(rgba, 4, width, 0, this.vertical, temp, this.height);
      if (needHorizontal) horizontalPass(temp, 3, width, 0, this.height, this.horizontal, out, this.width);
      else out.set(temp.subarray(0, out.length));
    }
    return out;
  }
}
