// The lesion diary's storage: entries (photo, lesion name, body site, date, the model's answer) kept on this
// device only, in IndexedDB, encrypted at rest. No DOM here: diary-view.js draws the screens.
//
// Why it is built this way:
// - The key is derived from a passphrase the user sets (PBKDF2-SHA-256, 600,000 iterations: OWASP's 2023
//   figure for that hash) with a random 16-byte salt per diary, and is a non-extractable AES-GCM-256
//   CryptoKey: script can use it but never read it, and it lives in memory only while the diary is open.
// - Each entry is one JSON document (photo as JPEG, name, site, date, result) sealed as one AES-GCM blob with
//   a fresh random 12-byte IV; its IndexedDB key is a random id (names never appear in keys) that is also the
//   GCM additional data, so a record cannot be swapped for another without failing authentication.
// - A key-check record (a known value sealed under the key) lets a wrong passphrase fail AES-GCM's
//   authentication before any entry is read or anything is written.
// - A backup is the same ciphertext in a JSON file (salt, iteration count, version, check, records): it is
//   as safe as the diary and useless without the passphrase. If the passphrase is forgotten, nothing can
//   recover the data: that is the point.
// What is not hidden: how many entries there are and roughly how big each is.

export const PBKDF2_ITERATIONS = 600_000;
export const MIN_PASSPHRASE = 8;
export const DB_NAME = 'skinscan-diary';
export const BACKUP_FORMAT = 'skinscan-diary-backup';
export const BACKUP_VERSION = 1;
const DB_VERSION = 1;
const META = 'meta';
const ENTRIES = 'entries';
const META_KEY = 'diary';
const SALT_BYTES = 16;
const IV_BYTES = 12;
const CHECK_TEXT = 'skinscan diary key check v1';
const CHECK_AD = 'check';

/** A problem the user can act on; `code` is for the screens and tests, `message` is shown as is. */
export class DiaryError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'DiaryError';
    this.code = code;
  }
}

const WRONG_PASSPHRASE = 'Wrong passphrase. Nothing was opened or changed: check the spelling and try again.';

// ------------------------------------------------------------------------------------------ encoding
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function toBase64(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = '';
  for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** 16 random bytes as hex: entry ids carry nothing about the entry. */
export function randomId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

// -------------------------------------------------------------------------------------------- crypto
/**
 * The diary key: PBKDF2-SHA-256 over the passphrase (Unicode NFC, so the same words typed on another device
 * give the same bytes), non-extractable, AES-GCM-256. Refuses fewer than 600,000 iterations: a backup file
 * must not be able to talk the app into a weak key.
 */
export async function deriveKey(passphrase, salt, iterations = PBKDF2_ITERATIONS) {
  if (typeof passphrase !== 'string' || passphrase.length === 0) {
    throw new DiaryError('no-passphrase', 'Type the diary passphrase.');
  }
  if (!Number.isInteger(iterations) || iterations < PBKDF2_ITERATIONS) {
    throw new DiaryError('weak-key', `The key must be derived with at least ${PBKDF2_ITERATIONS} PBKDF2 iterations.`);
  }
  const material = await crypto.subtle.importKey('raw', encoder.encode(passphrase.normalize('NFC')), 'PBKDF2',
    false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, material,
    { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

/** Seal bytes with AES-GCM under a fresh random IV; `ad` (a string) is authenticated but not stored. */
export async function seal(key, bytes, ad) {
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const data = await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: encoder.encode(ad) }, key, bytes);
  return { iv, data: new Uint8Array(data) };
}

/** Open a sealed record; a wrong key or any changed byte (IV, data, `ad`) throws DiaryError 'wrong-passphrase'. */
export async function unseal(key, { iv, data }, ad) {
  try {
    const bytes = await crypto.subtle.decrypt({ name: 'AES-GCM', iv, additionalData: encoder.encode(ad) }, key, data);
    return new Uint8Array(bytes);
  } catch (error) {
    if (error && error.name === 'OperationError') throw new DiaryError('wrong-passphrase', WRONG_PASSPHRASE);
    throw error;
  }
}

export const sealJson = (key, value, ad) => seal(key, encoder.encode(JSON.stringify(value)), ad);
export const unsealJson = async (key, sealed, ad) => JSON.parse(decoder.decode(await unseal(key, sealed, ad)));

/** A new diary's header: salt, iteration count and the key-check record. */
export async function newHeader(passphrase) {
  if (typeof passphrase !== 'string' || passphrase.length < MIN_PASSPHRASE) {
    throw new DiaryError('short-passphrase', `Choose a passphrase of at least ${MIN_PASSPHRASE} characters `
      + '(a few words you will remember is best).');
  }
  const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
  const key = await deriveKey(passphrase, salt);
  const check = await seal(key, encoder.encode(CHECK_TEXT), CHECK_AD);
  return { header: { version: BACKUP_VERSION, salt, iterations: PBKDF2_ITERATIONS, check }, key };
}

/** The key for `header` if `passphrase` is the right one; DiaryError 'wrong-passphrase' otherwise. */
export async function unlockHeader(header, passphrase) {
  const key = await deriveKey(passphrase, header.salt, header.iterations);
  const check = decoder.decode(await unseal(key, header.check, CHECK_AD));
  if (check !== CHECK_TEXT) throw new DiaryError('wrong-passphrase', WRONG_PASSPHRASE);
  return key;
}

// ----------------------------------------------------------------------------------------- IndexedDB
const request = (req) => new Promise((resolve, reject) => {
  req.onsuccess = () => resolve(req.result);
  req.onerror = () => reject(req.error);
});

const done = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new DiaryError('aborted', 'Saving to the diary was interrupted.'));
});

function storageMissing() {
  return new DiaryError('no-storage', 'This browser does not let the page store data (private mode?): '
    + 'the diary needs IndexedDB.');
}

function openDatabase() {
  if (typeof indexedDB === 'undefined') return Promise.reject(storageMissing());
  const req = indexedDB.open(DB_NAME, DB_VERSION);
  req.onupgradeneeded = () => {
    req.result.createObjectStore(META);
    req.result.createObjectStore(ENTRIES, { keyPath: 'id' });
  };
  return request(req);
}

/** Whether this device has a diary, without creating one. */
export async function diaryExists() {
  if (typeof indexedDB === 'undefined') return false;
  const names = (await indexedDB.databases()).map((database) => database.name);
  if (!names.includes(DB_NAME)) return false;
  const db = await openDatabase();
  try {
    return Boolean(await request(db.transaction(META).objectStore(META).get(META_KEY)));
  } finally {
    db.close();
  }
}

async function readHeader(db) {
  const header = await request(db.transaction(META).objectStore(META).get(META_KEY));
  if (!header) throw new DiaryError('no-diary', 'There is no diary on this device yet.');
  return header;
}

// ------------------------------------------------------------------------------------------ the diary
/** What a saved entry holds once decrypted; `photo` is a JPEG Blob. */
function checkEntry({ lesion, site, date, photo, result }) {
  if (typeof lesion !== 'string' || !lesion.trim()) throw new DiaryError('no-lesion', 'Give the lesion a name.');
  if (!/^\d{4}-\d{2}-\d{2}$/.test(date || '')) throw new DiaryError('bad-date', 'Give the date as YYYY-MM-DD.');
  if (!(photo instanceof Blob) || photo.type !== 'image/jpeg') {
    throw new DiaryError('no-photo', 'There is no screened photo to save.');
  }
  if (!result || typeof result !== 'object') throw new DiaryError('no-result', 'There is no result to save.');
  return { lesion: lesion.trim(), site: typeof site === 'string' ? site.trim() : '', date };
}

/** An open (unlocked) diary: holds the key in memory until `close()` or `deleteEverything()`. */
export class Diary {
  constructor(db, key) {
    this.db = db;
    this.key = key;
  }

  get locked() {
    return this.key === null;
  }

  #use() {
    if (this.key === null) throw new DiaryError('locked', 'The diary is locked: unlock it with its passphrase.');
  }

  /** Encrypt and store one entry; resolves with its random id. */
  async saveEntry(entry) {
    this.#use();
    const fields = checkEntry(entry);
    const photo = toBase64(new Uint8Array(await entry.photo.arrayBuffer()));
    const id = randomId();
    const sealed = await sealJson(this.key, { ...fields, savedAt: new Date().toISOString(), photo,
      result: entry.result }, id);
    const tx = this.db.transaction(ENTRIES, 'readwrite');
    tx.objectStore(ENTRIES).add({ id, iv: sealed.iv, data: sealed.data });
    await done(tx);
    return id;
  }

  /** Every entry, decrypted, oldest first (by date, then by when it was saved); photos as JPEG Blobs. */
  async entries() {
    this.#use();
    const records = await request(this.db.transaction(ENTRIES).objectStore(ENTRIES).getAll());
    const entries = await Promise.all(records.map(async (record) => {
      let value;
      try {
        value = await unsealJson(this.key, record, record.id);
      } catch {
        throw new DiaryError('damaged', 'A diary entry on this device is damaged and cannot be read. Restore a '
          + 'backup, or delete everything and start again.');
      }
      return { ...value, id: record.id, photo: new Blob([fromBase64(value.photo)], { type: 'image/jpeg' }) };
    }));
    return entries.sort((a, b) => a.date.localeCompare(b.date) || a.savedAt.localeCompare(b.savedAt));
  }

  /** One line per lesion (name, site of its latest entry, photo count, first and last date, latest entry). */
  async listLesions() {
    const lesions = new Map();
    for (const entry of await this.entries()) {
      const key = entry.lesion.toLocaleLowerCase();
      const lesion = lesions.get(key) || { lesion: entry.lesion, count: 0, first: entry.date };
      Object.assign(lesion, { site: entry.site, count: lesion.count + 1, last: entry.date, latest: entry });
      lesions.set(key, lesion);
    }
    return [...lesions.values()].sort((a, b) => b.last.localeCompare(a.last) || a.lesion.localeCompare(b.lesion));
  }

  /** One lesion's entries in date order (names compared case-insensitively). */
  async history(lesion) {
    const key = lesion.toLocaleLowerCase();
    return (await this.entries()).filter((entry) => entry.lesion.toLocaleLowerCase() === key);
  }

  /** The whole diary as a backup file's text: the stored ciphertext, never decrypted on the way. */
  async exportBackup() {
    this.#use();
    const tx = this.db.transaction([META, ENTRIES]);
    const [header, records] = await Promise.all([request(tx.objectStore(META).get(META_KEY)),
      request(tx.objectStore(ENTRIES).getAll())]);
    const pack = ({ iv, data }) => ({ iv: toBase64(iv), data: toBase64(data) });
    return JSON.stringify({
      format: BACKUP_FORMAT, version: BACKUP_VERSION, kdf: 'PBKDF2-SHA-256', cipher: 'AES-GCM-256',
      salt: toBase64(header.salt), iterations: header.iterations, check: pack(header.check),
      entries: records.map((record) => ({ id: record.id, ...pack(record) })),
    });
  }

  /** Lock: forget the key (the entries stay, encrypted). */
  close() {
    this.key = null;
    this.db.close();
  }
}

/** Create this device's diary (refused if there is one: it would have to be deleted first). */
export async function createDiary(passphrase) {
  if (await diaryExists()) {
    throw new DiaryError('exists', 'This device already has a diary: unlock it, or delete it first.');
  }
  const { header, key } = await newHeader(passphrase);
  const db = await openDatabase();
  const tx = db.transaction(META, 'readwrite');
  tx.objectStore(META).put(header, META_KEY);
  await done(tx);
  return new Diary(db, key);
}

/** Unlock this device's diary; a wrong passphrase is refused before anything is read or written. */
export async function openDiary(passphrase) {
  if (!(await diaryExists())) throw new DiaryError('no-diary', 'There is no diary on this device yet.');
  const db = await openDatabase();
  try {
    return new Diary(db, await unlockHeader(await readHeader(db), passphrase));
  } catch (error) {
    db.close();
    throw error;
  }
}

/** Parse and check a backup file's text; DiaryError 'bad-backup' says what is wrong with it. */
export function parseBackup(text) {
  const bad = (why) => new DiaryError('bad-backup', `This is not a skinscan diary backup (${why}). `
    + 'Choose the .json file that "Export backup" saved.');
  let backup;
  try {
    backup = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  if (!backup || backup.format !== BACKUP_FORMAT) throw bad('no skinscan diary header');
  if (backup.version !== BACKUP_VERSION) {
    throw new DiaryError('bad-backup', `This backup is version ${backup.version}; this app reads version `
      + `${BACKUP_VERSION}. Update the app and try again.`);
  }
  const bytes = (value, what) => {
    try {
      return fromBase64(value);
    } catch {
      throw bad(`${what} is damaged`);
    }
  };
  const sealed = (value, what) => {
    if (!value || typeof value.iv !== 'string' || typeof value.data !== 'string') throw bad(`${what} is missing`);
    return { iv: bytes(value.iv, what), data: bytes(value.data, what) };
  };
  if (!Number.isInteger(backup.iterations) || backup.iterations < PBKDF2_ITERATIONS) {
    throw bad('its key settings are missing or too weak');
  }
  if (!Array.isArray(backup.entries)) throw bad('it has no entries list');
  const salt = bytes(backup.salt || '', 'the salt');
  if (salt.length < SALT_BYTES) throw bad('the salt is missing');
  const entries = backup.entries.map((entry, i) => {
    if (typeof entry.id !== 'string' || !/^[0-9a-f]{32}$/.test(entry.id)) throw bad(`entry ${i + 1} has no id`);
    return { id: entry.id, ...sealed(entry, `entry ${i + 1}`) };
  });
  return { header: { version: backup.version, salt, iterations: backup.iterations, check: sealed(backup.check,
    'the key check') }, entries };
}

/**
 * Restore a backup file. On a device without a diary the backup becomes it (the same ciphertext, the same
 * passphrase); on a device whose diary opens with the same passphrase, its entries are added (re-encrypted
 * under this diary's key; entries already here are skipped). Nothing is written unless the passphrase
 * opens the backup and every one of its entries decrypts. Resolves with {diary, added, skipped}.
 */
export async function importBackup(text, passphrase) {
  const { header, entries } = parseBackup(text);
  const backupKey = await unlockHeader(header, passphrase);
  const values = [];
  for (const record of entries) {
    try {
      values.push(await unsealJson(backupKey, record, record.id));
    } catch {
      throw new DiaryError('bad-backup', 'This backup file is damaged (an entry does not decrypt). Nothing was '
        + 'imported.');
    }
  }
  if (!(await diaryExists())) {
    const db = await openDatabase();
    const tx = db.transaction([META, ENTRIES], 'readwrite');
    tx.objectStore(META).put(header, META_KEY);
    for (const record of entries) tx.objectStore(ENTRIES).put(record);
    await done(tx);
    return { diary: new Diary(db, backupKey), added: entries.length, skipped: 0 };
  }
  let diary;
  try {
    diary = await openDiary(passphrase);
  } catch (error) {
    if (error.code !== 'wrong-passphrase') throw error;
    throw new DiaryError('other-passphrase', 'This device already has a diary with another passphrase. Import '
      + 'needs the same passphrase for both, or delete this device\'s diary first. Nothing was imported.');
  }
  const existing = new Set(await request(diary.db.transaction(ENTRIES).objectStore(ENTRIES).getAllKeys()));
  const fresh = entries.map((record, i) => [record.id, values[i]]).filter(([id]) => !existing.has(id));
  const sealed = await Promise.all(fresh.map(([id, value]) => sealJson(diary.key, value, id)));
  const tx = diary.db.transaction(ENTRIES, 'readwrite');
  fresh.forEach(([id], i) => tx.objectStore(ENTRIES).put({ id, iv: sealed[i].iv, data: sealed[i].data }));
  await done(tx);
  return { diary, added: fresh.length, skipped: entries.length - fresh.length };
}

/**
 * Delete the whole diary: the key is dropped and the IndexedDB database deleted. `diary` (if open) is closed
 * first, since an open connection would block the deletion.
 */
export async function deleteEverything(diary = null) {
  if (diary) diary.close();
  if (typeof indexedDB === 'undefined') return;
  await new Promise((resolve, reject) => {
    const req = indexedDB.deleteDatabase(DB_NAME);
    req.onsuccess = () => resolve();
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new DiaryError('blocked', 'The diary is open in another tab: close that tab and '
      + 'try again.'));
  });
}
