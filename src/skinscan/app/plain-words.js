/**
 * What a result means, in plain words: one set of sentences for the result screen, the diary and the doctor's
 * report (skinscan/runtime/doctor_report.py writes the same ones), so a user never reads two versions.
 */
export const PLAIN = {
  flagged: 'Some features look like skin cancer: see a dermatologist soon.',
  notFlagged: 'No strong sign of skin cancer in this image; keep watching it and see a doctor if it changes.',
  noDiagnosis: 'No diagnosis is shown for this image: take a new photo as described above.',
  noMap: 'No heat map: this image cannot be assessed.',
};
