// The lesion diary's screens: set up, unlock, save an entry, the lesion list, one lesion's history over time,
// backup/restore and "delete everything". Storage and encryption are diary.js's job; the page (app.js) only
// calls `attachDiary` with a function that says what is screened right now.
//
// The diary is a full-screen panel under the page's fixed disclaimer (not a modal <dialog>, which would sit
// above it): "Screening aid, not a diagnosis" stays on screen here too. Everything is built with DOM calls
// (no innerHTML, no inline styles: the server's CSP allows neither). The diary stays unlocked while the page
// is on screen, and locks (forgets its key) when the page is hidden or the user taps Lock.

import {
  DiaryError, MIN_PASSPHRASE, createDiary, deleteEverything, diaryExists, importBackup, openDiary,
} from './diary.js';
import { PLAIN } from './plain-words.js';

const PHOTO_MAX_SIDE = 512; // the stored photo: enough to compare a lesion over time, small to encrypt and keep
const JPEG_QUALITY = 0.85;
const SITES = ['Face', 'Scalp', 'Neck', 'Chest', 'Back', 'Abdomen', 'Left arm', 'Right arm', 'Left hand',
  'Right hand', 'Left leg', 'Right leg', 'Left foot', 'Right foot'];

/** A DOM element: `h('p', {className: 'x'}, 'text', child)`. Attributes go through properties, never HTML. */
function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name.startsWith('data-') || name.startsWith('aria-') || name === 'for' || name === 'list') {
      element.setAttribute(name, value);
    } else {
      element[name] = value;
    }
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

const percent = (p) => `${(100 * p).toFixed(p < 0.1 ? 1 : 0)}%`;

function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

function showDate(date) {
  return new Date(`${date}T12:00:00`).toLocaleDateString(undefined, { day: 'numeric', month: 'short',
    year: 'numeric' });
}

/**
 * What the diary keeps of a result: the answer as the page showed it. For "cannot assess" only the reason
 * is kept: no diagnosis is stored, so none can ever be shown for that photo.
 */
export function resultSnapshot(result, model) {
  if (result.cannotAssess) {
    return { cannotAssess: true, reason: result.cannotAssessReason, message: result.cannotAssessMessage };
  }
  return {
    cannotAssess: false, malignant: Boolean(result.malignant), malignantProbability: result.malignantProbability,
    threshold: model && model.thresholds ? model.thresholds.malignant : null,
    top: result.top.map(({ code, name, probability }) => ({ code, name, probability })),
  };
}

/** The model's answer for an entry, in plain words (the reason only, for "cannot assess"). */
function answer(result) {
  if (result.cannotAssess) {
    return h('div', { className: 'diary-answer unsure' },
      h('p', { className: 'diary-verdict' }, `Cannot assess this image: ${result.message}.`));
  }
  const verdict = result.malignant ? PLAIN.flagged : PLAIN.notFlagged;
  return h('div', { className: `diary-answer${result.malignant ? ' flagged' : ''}` },
    h('p', { className: 'diary-verdict' }, verdict),
    h('ol', { className: 'diary-top' }, result.top.map((entry) => h('li', {},
      h('span', { className: 'name' }, entry.name), ' ', h('span', { className: 'value' }, percent(entry.probability))))));
}

/** The screened picture (a paused video or a photo), downscaled to at most 512 px, as a JPEG Blob. */
function captureJpeg(element) {
  const width = element.videoWidth || element.naturalWidth;
  const height = element.videoHeight || element.naturalHeight;
  if (!width || !height) return Promise.reject(new DiaryError('no-photo', 'There is no picture to save.'));
  const scale = Math.min(1, PHOTO_MAX_SIDE / Math.max(width, height));
  const canvas = h('canvas', { width: Math.round(width * scale), height: Math.round(height * scale) });
  canvas.getContext('2d').drawImage(element, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve, reject) => canvas.toBlob((blob) => (blob ? resolve(blob)
    : reject(new DiaryError('no-photo', 'The picture could not be converted for saving.'))), 'image/jpeg',
  JPEG_QUALITY));
}

function download(text, name) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
  const link = h('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Wire the diary into the page. `screened()` returns what is on screen and screened ({result, image, model},
 * `image` an <img> or a paused <video>) or null when there is nothing to save (live camera, no result yet).
 */
export function attachDiary({ screened }) {
  const panel = document.getElementById('diary');
  const saveButton = document.getElementById('diary-save');
  const openButton = document.getElementById('diary-open');
  const page = document.querySelector('main');
  const state = { screen: 'closed', message: '', error: null, busy: false, settled: 0 }; // settled: actions done
  window.skinscanDiary = state; // for the browser tests
  let diary = null; // an unlocked Diary, or null
  let pending = null; // {photo: Blob, result} waiting to be saved
  let urls = []; // object URLs of the decrypted photos on screen: revoked when the screen changes
  let nextUrls = []; // those made for the screen being built

  const title = h('h2', { id: 'diary-title', tabIndex: -1 }, 'Lesion diary');
  const closeButton = h('button', { type: 'button', className: 'diary-close', onclick: close }, 'Close');
  const message = h('p', { className: 'diary-message', role: 'alert', hidden: true });
  const body = h('div', { className: 'diary-body' });
  panel.setAttribute('aria-labelledby', 'diary-title');
  panel.append(h('div', { className: 'diary-head' }, title, closeButton), message, body);

  function photoUrl(blob) {
    const url = URL.createObjectURL(blob);
    nextUrls.push(url);
    return url;
  }

  function say(text, isError = false) {
    state.message = text;
    state.error = isError ? text : null;
    message.textContent = text;
    message.hidden = !text;
    message.classList.toggle('bad', isError);
  }

  function show(screen, heading, ...children) {
    for (const url of urls) URL.revokeObjectURL(url);
    [urls, nextUrls] = [nextUrls, []];
    state.screen = screen;
    title.textContent = heading;
    body.replaceChildren(...children.flat().filter(Boolean));
    panel.hidden = false;
    page.inert = true; // the camera page behind the panel takes no focus or clicks meanwhile
    panel.dataset.screen = screen;
    panel.scrollTop = 0;
    title.focus();
  }

  /** Run a click's work once at a time; DiaryErrors are shown, anything else too, as a plain message. */
  async function act(work) {
    if (state.busy) return;
    state.busy = true;
    panel.classList.add('busy');
    try {
      await work();
    } catch (error) {
      say(error instanceof DiaryError ? error.message : `Something went wrong: ${error.message || error}`, true);
    } finally {
      state.busy = false;
      state.settled += 1;
      panel.classList.remove('busy');
    }
  }

  const button = (text, onclick, className = '') => h('button', { type: 'button', className, onclick: () => act(onclick) },
    text);

  function passphraseField(id, label, autocomplete) {
    const input = h('input', { id, type: 'password', autocomplete, required: true, minLength: 1 });
    return [h('label', { for: id }, label), input];
  }

  function form(id, fields, submitText, onsubmit) {
    return h('form', { id, className: 'diary-form', onsubmit: (event) => { event.preventDefault(); act(onsubmit); } },
      fields, h('button', { type: 'submit' }, submitText));
  }

  function restoreControls() {
    const file = h('input', { id: 'diary-import-file', type: 'file', accept: '.json,application/json', hidden: true,
      onchange: () => {
        const chosen = file.files[0];
        file.value = '';
        if (chosen) act(() => restoreScreen(chosen));
      } });
    return [h('label', { className: 'button diary-secondary', for: 'diary-import-file' }, 'Restore a backup file'),
      file];
  }

  // ------------------------------------------------------------------------------------------- screens
  async function open() {
    say('');
    if (diary) return pending ? saveScreen() : listScreen();
    return (await diaryExists()) ? unlockScreen() : setupScreen();
  }

  function setupScreen() {
    const [passLabel, pass] = passphraseField('diary-new-pass', 'Choose a passphrase', 'new-password');
    const [againLabel, again] = passphraseField('diary-new-pass2', 'Type it again', 'new-password');
    show('setup', 'Start your lesion diary',
      h('p', {}, 'Keep screened photos of a lesion with their date, name and result, to see how it changes over time. '
        + 'Everything stays on this device, encrypted with your passphrase.'),
      h('p', { className: 'diary-warning' }, `Use at least ${MIN_PASSPHRASE} characters. If you forget the `
        + 'passphrase, nobody can open the diary: not you, not us.'),
      form('diary-setup', [passLabel, pass, againLabel, again], 'Create diary', async () => {
        if (pass.value !== again.value) throw new DiaryError('mismatch', 'The two passphrases differ: type them again.');
        diary = await createDiary(pass.value);
        say('Diary created.');
        return pending ? saveScreen() : listScreen();
      }),
      restoreControls());
    pass.focus();
  }

  function unlockScreen() {
    const [label, pass] = passphraseField('diary-pass', 'Passphrase', 'current-password');
    show('unlock', 'Unlock your diary',
      form('diary-unlock', [label, pass], 'Unlock', async () => {
        try {
          diary = await openDiary(pass.value);
        } catch (error) {
          pass.value = '';
          pass.focus();
          throw error;
        }
        say('');
        return pending ? saveScreen() : listScreen();
      }),
      h('p', { className: 'diary-note' }, 'Forgot the passphrase? The diary cannot be opened without it. You can '
        + 'only delete it and start again.'),
      restoreControls(),
      button('Delete everything', confirmDeleteScreen, 'danger'));
    pass.focus();
  }

  async function saveScreen() {
    const { photo, result } = pending;
    const lesions = await diary.listLesions();
    const lesionList = h('datalist', { id: 'diary-lesion-names' }, lesions.map((l) => h('option', { value: l.lesion })));
    const siteList = h('datalist', { id: 'diary-sites' }, SITES.map((site) => h('option', { value: site })));
    const name = h('input', { id: 'diary-lesion', type: 'text', list: 'diary-lesion-names', required: true,
      autocomplete: 'off', placeholder: 'e.g. Mole on left shoulder', maxLength: 80 });
    const site = h('input', { id: 'diary-site', type: 'text', list: 'diary-sites', autocomplete: 'off',
      placeholder: 'e.g. Back', maxLength: 80 });
    const date = h('input', { id: 'diary-date', type: 'date', value: today(), required: true, max: today() });
    name.addEventListener('input', () => { // a known lesion: suggest where it is
      const known = lesions.find((l) => l.lesion.toLocaleLowerCase() === name.value.trim().toLocaleLowerCase());
      if (known && !site.value) site.value = known.site;
    });
    show('save', 'Save to diary',
      h('div', { className: 'diary-preview' }, h('img', { src: photoUrl(photo), alt: 'The screened photo' }),
        answer(result)),
      form('diary-save-form', [lesionList, siteList, h('label', { for: 'diary-lesion' }, 'Lesion name'), name,
        h('label', { for: 'diary-site' }, 'Where on the body'), site, h('label', { for: 'diary-date' }, 'Date'),
        date], 'Save', async () => {
        const lesion = name.value.trim();
        await diary.saveEntry({ lesion, site: site.value, date: date.value, photo, result });
        pending = null;
        say(`Saved to "${lesion}".`);
        return historyScreen(lesion);
      }),
      button('Cancel', () => { pending = null; return listScreen(); }, 'diary-secondary'));
    name.focus();
  }

  async function listScreen() {
    const lesions = await diary.listLesions();
    const cards = lesions.map((lesion) => h('li', {}, h('button', { type: 'button', className: 'diary-lesion',
      'data-lesion': lesion.lesion, onclick: () => act(() => historyScreen(lesion.lesion)) },
    h('img', { src: photoUrl(lesion.latest.photo), alt: '' }),
    h('span', { className: 'diary-lesion-text' },
      h('strong', {}, lesion.lesion),
      h('span', {}, [lesion.site, `${lesion.count} photo${lesion.count > 1 ? 's' : ''}`].filter(Boolean).join(' · ')),
      h('span', {}, lesion.count > 1 ? `${showDate(lesion.first)} – ${showDate(lesion.last)}` : showDate(lesion.last))))));
    show('list', 'Lesion diary',
      lesions.length ? h('ul', { className: 'diary-lesions' }, cards)
        : h('p', { className: 'diary-note' }, 'No entries yet. Freeze the camera on a lesion (or pick a photo), then tap '
          + '"Save to diary".'),
      h('div', { className: 'diary-actions' },
        button('Export backup', exportBackup),
        restoreControls(),
        button('Lock', lock, 'diary-secondary'),
        button('Delete everything', confirmDeleteScreen, 'danger')));
  }

  async function historyScreen(lesion) {
    const entries = await diary.history(lesion);
    if (!entries.length) return listScreen();
    const latest = entries.at(-1);
    const cards = entries.map((entry) => h('li', { className: 'diary-entry', 'data-id': entry.id },
      h('img', { src: photoUrl(entry.photo), alt: `${entry.lesion}, ${showDate(entry.date)}` }),
      h('time', { dateTime: entry.date }, showDate(entry.date)),
      answer(entry.result)));
    return show('history', latest.lesion,
      h('p', { className: 'diary-note' }, [latest.site, `${entries.length} photo${entries.length > 1 ? 's' : ''}, oldest `
        + 'first. A lesion that changes in size, shape or colour should be seen by a dermatologist.']
        .filter(Boolean).join(' · ')),
      h('ol', { className: 'diary-history' }, cards),
      button('All lesions', listScreen, 'diary-secondary'));
  }

  async function exportBackup() {
    download(await diary.exportBackup(), `skinscan-diary-${today()}.json`);
    say('Backup saved. It is encrypted: restoring it needs the same passphrase.');
  }

  function restoreScreen(file) {
    say('');
    const [label, pass] = passphraseField('diary-import-pass', 'Passphrase of the backup', 'current-password');
    show('restore', 'Restore a backup',
      h('p', {}, `File: ${file.name}`),
      h('p', { className: 'diary-note' }, 'The entries are added to the diary on this device, which must use the '
        + 'same passphrase (or be empty).'),
      form('diary-import', [label, pass], 'Restore', async () => {
        const text = await file.text();
        const { diary: restored, added, skipped } = await importBackup(text, pass.value);
        if (diary && diary !== restored) diary.close();
        diary = restored;
        say(`Restored ${added} entr${added === 1 ? 'y' : 'ies'}${skipped ? ` (${skipped} already here)` : ''}.`);
        return listScreen();
      }),
      button('Cancel', open, 'diary-secondary'));
    pass.focus();
  }

  function confirmDeleteScreen() {
    say('');
    show('delete', 'Delete everything?',
      h('p', {}, 'All entries and photos of the diary are deleted from this device, with the diary itself. '
        + 'This cannot be undone. Backup files you exported are not touched.'),
      button('Yes, delete everything', async () => {
        await deleteEverything(diary);
        diary = null;
        pending = null;
        say('The diary was deleted from this device.');
        return setupScreen();
      }, 'danger'),
      button('No, keep it', open, 'diary-secondary'));
  }

  function lock() {
    if (diary) diary.close();
    diary = null;
    if (!panel.hidden) {
      say('Locked.');
      return unlockScreen();
    }
    return undefined;
  }

  function close() {
    for (const url of [...urls, ...nextUrls]) URL.revokeObjectURL(url);
    [urls, nextUrls] = [[], []];
    body.replaceChildren(); // no decrypted photo or name stays in the page
    panel.hidden = true;
    page.inert = false;
    state.screen = 'closed';
    openButton.focus();
  }

  // --------------------------------------------------------------------------------------------- hooks
  saveButton.addEventListener('click', () => act(async () => {
    const now = screened();
    say('');
    if (!now) {
      show('nothing', 'Save to diary', h('p', {}, 'Nothing to save yet: freeze the camera on the lesion, or pick a '
        + 'photo, and wait for its result. Then tap "Save to diary".'), button('Open the diary', open));
      return;
    }
    pending = { photo: await captureJpeg(now.image), result: resultSnapshot(now.result, now.model) };
    await open();
  }));
  openButton.addEventListener('click', () => act(() => { pending = null; return open(); }));
  panel.addEventListener('keydown', (event) => { if (event.key === 'Escape') close(); });
  document.addEventListener('visibilitychange', () => { if (document.hidden) lock(); });
}
