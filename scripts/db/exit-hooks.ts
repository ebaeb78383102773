// Stops our throwaway servers when this process ends: normal exit and uncaught errors ('exit', synchronously),
// and SIGINT/SIGTERM/SIGHUP (asynchronously, then the signal's default action unless someone else handles it).
export interface Stoppable {
  stop(): Promise<void>;
  stopSync(): void;
}

const live = new Set<Stoppable>();
const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let installed = false;

function onExit(): void {
  for (const server of live) {
    try {
      server.stopSync();
    } catch {
      // exiting anyway; the next start removes what is left
    }
  }
  live.clear();
}

async function onSignal(signal: NodeJS.Signals): Promise<void> {
  await Promise.allSettled([...live].map((server) => server.stop()));
  if (process.listenerCount(signal) === 1) {
    // only we listened: restore the default action and re-raise
    for (const name of signals) process.removeListener(name, onSignal);
    process.kill(process.pid, signal);
  }
}

/** Registers a server to stop when the process ends; returns the function that unregisters it. */
export function stopOnExit(server: Stoppable): () => void {
  if (!installed) {
    installed = true;
    process.on('exit', onExit);
    for (const signal of signals) process.on(signal, onSignal);
  }
  live.add(server);
  return () => {
    live.delete(server);
  };
}
