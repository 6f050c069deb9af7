// Start and stop `skinscan app` for the browser drivers (drive_app.mjs, drive_diary.mjs): each starts its own
// server on a free port (so it can stop it for the offline checks) and waits for the URL it prints.
import { spawn } from 'node:child_process';

/** Start `skinscan app` (argv) and resolve with {child, url, output()} once it prints its URL. */
export function startServer(argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${output}`)), 30_000);
    const onData = (chunk) => {
      output += chunk;
      const match = output.match(/http:\/\/[^\s/]+:\d+\//);
      if (match) {
        clearTimeout(timer);
        resolve({ child, url: match[0], output: () => output });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}): ${output}`)); });
  });
}

/** Stop the server (SIGTERM) and wait until it has exited. */
export async function stopServer(server) {
  if (server.child.exitCode !== null || server.child.signalCode !== null) return;
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGTERM');
  await exited;
}
