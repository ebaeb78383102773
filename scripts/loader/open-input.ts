// The loader's input as a byte stream: a file, stdin ('-') or any Readable, gunzipped when it
// starts with gzip's magic bytes (1f 8b), whatever its name.
import { createReadStream } from 'node:fs';
import { access, constants } from 'node:fs/promises';
import { pipeline, Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';

const GZIP_MAGIC = [0x1f, 0x8b];

export type InputSource = string | Readable;

/**
 * Reads until `count` bytes are buffered or the stream ends, and returns them with a stream that
 * still holds every byte: the same stream with the bytes put back, or, when it has ended (bytes
 * cannot be put back then), a new one made of them.
 */
export async function peekBytes(source: Readable, count: number): Promise<{ head: Buffer; stream: Readable }> {
  const stream = source;
  const parts: Buffer[] = [];
  let length = 0;
  while (length < count) {
    const chunk = stream.read() as Buffer | string | null;
    if (chunk !== null) {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      parts.push(bytes);
      length += bytes.length;
      continue;
    }
    if (stream.readableEnded || stream.destroyed) break;
    await new Promise<void>((resolve, reject) => {
      const done = () => {
        stream.off('readable', done);
        stream.off('end', done);
        stream.off('close', done);
        stream.off('error', failed);
        resolve();
      };
      const failed = (error: Error) => {
        done();
        reject(error);
      };
      stream.on('readable', done);
      stream.on('end', done);
      stream.on('close', done);
      stream.on('error', failed);
    });
    if (stream.errored) throw stream.errored;
  }
  const head = Buffer.concat(parts);
  if (stream.readableEnded) return { head, stream: Readable.from(head.length > 0 ? [head] : []) };
  if (head.length > 0) stream.unshift(head);
  return { head, stream };
}

export function isGzip(head: Buffer): boolean {
  return head.length >= 2 && head[0] === GZIP_MAGIC[0] && head[1] === GZIP_MAGIC[1];
}

/** '-' is stdin, any other string a file path (checked here, so a typo fails before a run begins). */
export async function checkInputPath(source: InputSource): Promise<void> {
  if (typeof source !== 'string' || source === '-') return;
  await access(source, constants.R_OK).catch((error: NodeJS.ErrnoException) => {
    throw new Error(`cannot read input file ${source} (${error.code ?? error.message}): check the --file path`);
  });
}

function rawStream(source: InputSource): Readable {
  if (typeof source !== 'string') return source;
  if (source === '-') return process.stdin;
  return createReadStream(source, { highWaterMark: 256 * 1024 });
}

/** The input's bytes, decompressed when gzip. Errors (a bad gzip, a read error) surface on the returned stream. */
export async function openInput(source: InputSource): Promise<Readable> {
  const { head, stream: raw } = await peekBytes(rawStream(source), GZIP_MAGIC.length);
  if (!isGzip(head)) return raw;
  const gunzip = createGunzip({ chunkSize: 256 * 1024 });
  // pipeline hands a read error of raw on to gunzip, which its reader sees.
  pipeline(raw, gunzip, () => undefined);
  return gunzip;
}
