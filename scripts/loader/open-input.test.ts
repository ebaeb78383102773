import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { openInput } from './open-input.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'open-input-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, content: string | Buffer): string {
  const at = path.join(dir, name);
  writeFileSync(at, content);
  return at;
}

describe('openInput', () => {
  it('keeps every byte of an input shorter than the gzip check', async () => {
    expect(await text(await openInput(file('one', 'x')))).toBe('x');
    expect(await text(await openInput(Readable.from([Buffer.from('\n')])))).toBe('\n');
    expect(await text(await openInput(file('empty', '')))).toBe('');
  });

  it('gunzips by magic bytes and passes anything else through unchanged', async () => {
    const lines = '{"event":"a"}\n{"event":"b"}\n';
    expect(await text(await openInput(file('events.log', gzipSync(lines))))).toBe(lines);
    expect(await text(await openInput(file('events.gz', lines)))).toBe(lines);
    // a lone 0x1f is not gzip
    expect(await text(await openInput(Readable.from([Buffer.from([0x1f])])))).toBe('\x1f');
  });
});
