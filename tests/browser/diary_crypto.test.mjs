// Unit tests of the diary's crypto and backup parsing (src/skinscan/app/diary.js) in plain Node (WebCrypto is
// globalThis.crypto there): key derivation, sealing, the key check, and what a backup file must contain.
// IndexedDB is tested in Chromium (tests/browser/drive_diary.mjs). Run: node --test tests/browser/diary_crypto.test.mjs

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const diary = await import(fileURLToPath(new URL('../../src/skinscan/app/diary.js', import.meta.url)));
const {
  BACKUP_FORMAT, BACKUP_VERSION, DiaryError, PBKDF2_ITERATIONS, deriveKey, fromBase64, newHeader, parseBackup,
  randomId, seal, sealJson, toBase64, unlockHeader, unseal, unsealJson,
} = diary;

const PASSPHRASE = 'correct horse battery staple';

test('production key derivation is PBKDF2-SHA-256 with at least 600,000 iterations', async () => {
  assert.ok(PBKDF2_ITERATIONS >= 600_000);
  const salt = crypto.getRandomValues(new Uint8Array(16));
  await assert.rejects(deriveKey(PASSPHRASE, salt, 1000), (error) => error.code === 'weak-key');
  const key = await deriveKey(PASSPHRASE, salt);
  assert.equal(key.algorithm.name, 'AES-GCM');
  assert.equal(key.algorithm.length, 256);
  assert.equal(key.extractable, false); // script can use the key, never read it
  // The derivation is the standard one: the same bits as a raw PBKDF2 of the NFC passphrase.
  const material = await crypto.subtle.importKey('raw', new TextEncoder().encode(PASSPHRASE), 'PBKDF2', false,
    ['deriveBits']);
  const bits = await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations: PBKDF2_ITERATIONS },
    material, 256);
  const reference = await crypto.subtle.importKey('raw', bits, 'AES-GCM', false, ['decrypt']);
  const sealed = await seal(key, new TextEncoder().encode('hello'), 'ad');
  const opened = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: sealed.iv, additionalData: new TextEncoder()
    .encode('ad') }, reference, sealed.data);
  assert.equal(new TextDecoder().decode(opened), 'hello');
});

test('every seal has a fresh 12-byte IV and round-trips; a changed byte, IV or id is refused', async () => {
  const key = await deriveKey(PASSPHRASE, new Uint8Array(16));
  const value = { lesion: 'Mole on left shoulder', photo: 'AAAA' };
  const a = await sealJson(key, value, 'id-1');
  const b = await sealJson(key, value, 'id-1');
  assert.equal(a.iv.length, 12);
  assert.notDeepEqual(a.iv, b.iv);
  assert.notDeepEqual(a.data, b.data);
  assert.deepEqual(await unsealJson(key, a, 'id-1'), value);
  assert.ok(!new TextDecoder().decode(a.data).includes('Mole'));
  const flipped = { iv: a.iv, data: a.data.slice() };
  flipped.data[3] ^= 1;
  await assert.rejects(unseal(key, flipped, 'id-1'), DiaryError);
  await assert.rejects(unseal(key, { iv: b.iv, data: a.data }, 'id-1'), DiaryError);
  await assert.rejects(unseal(key, a, 'id-2'), DiaryError); // a record moved to another id
});

test('the key check accepts the passphrase and refuses any other', async () => {
  const { header } = await newHeader(PASSPHRASE);
  assert.equal(header.salt.length, 16);
  assert.equal(header.iterations, PBKDF2_ITERATIONS);
  await unlockHeader(header, PASSPHRASE);
  await assert.rejects(unlockHeader(header, 'correct horse battery stapler'),
    (error) => error.code === 'wrong-passphrase' && /Wrong passphrase/.test(error.message));
  // The same words typed with a composed or a decomposed accent are the same passphrase.
  const { header: accented } = await newHeader('caf\u00e9 au lait');
  await unlockHeader(accented, 'cafe\u0301 au lait');
  const other = await newHeader(PASSPHRASE);
  assert.notDeepEqual(other.header.salt, header.salt); // a random salt per diary
});

test('short passphrases are refused when a diary is created', async () => {
  await assert.rejects(newHeader('short'), (error) => error.code === 'short-passphrase' && /at least 8/.test(error.message));
  await assert.rejects(deriveKey('', new Uint8Array(16)), (error) => error.code === 'no-passphrase');
});

test('random ids and base64 round trips', () => {
  const id = randomId();
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.notEqual(randomId(), id);
  const bytes = crypto.getRandomValues(new Uint8Array(60_000)); // more than one 32 kB chunk
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
});

async function backupText(entries = 1) {
  const { header, key } = await newHeader(PASSPHRASE);
  const records = [];
  for (let i = 0; i < entries; i++) {
    const id = randomId();
    const sealed = await sealJson(key, { lesion: `lesion ${i}` }, id);
    records.push({ id, iv: toBase64(sealed.iv), data: toBase64(sealed.data) });
  }
  return JSON.stringify({ format: BACKUP_FORMAT, version: BACKUP_VERSION, salt: toBase64(header.salt),
    iterations: header.iterations, check: { iv: toBase64(header.check.iv), data: toBase64(header.check.data) },
    entries: records });
}

test('a backup file parses back to the header and entries it was made from', async () => {
  const text = await backupText(2);
  const { header, entries } = parseBackup(text);
  assert.equal(entries.length, 2);
  await unlockHeader(header, PASSPHRASE);
  await assert.rejects(unlockHeader(header, 'wrong passphrase'), (error) => error.code === 'wrong-passphrase');
});

test('foreign, damaged and weakened backup files get a clear message', async () => {
  const good = JSON.parse(await backupText());
  const cases = [
    ['not json at all', /not JSON/],
    [JSON.stringify({ some: 'other file' }), /no skinscan diary header/],
    [JSON.stringify({ ...good, version: 99 }), /version 99/],
    [JSON.stringify({ ...good, iterations: 1000 }), /too weak/],
    [JSON.stringify({ ...good, salt: '' }), /salt/],
    [JSON.stringify({ ...good, entries: 'x' }), /no entries list/],
    [JSON.stringify({ ...good, check: null }), /key check is missing/],
    [JSON.stringify({ ...good, entries: [{ id: 'Mole', iv: 'AA', data: 'AA' }] }), /entry 1 has no id/],
    [JSON.stringify({ ...good, entries: [{ ...good.entries[0], data: '***' }] }), /entry 1 is damaged/],
  ];
  for (const [text, why] of cases) {
    assert.throws(() => parseBackup(text), (error) => error.code === 'bad-backup' && why.test(error.message), text);
  }
});
