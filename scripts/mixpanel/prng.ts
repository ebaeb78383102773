// A small, fast, seeded PRNG (sfc32 seeded through splitmix32): same seed, same sequence,
// on every machine. Not for cryptography.

export interface Random {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** A uniform 32-bit unsigned integer. */
  u32(): number;
  /** true with probability p. */
  chance(p: number): boolean;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
}

/** splitmix32 step: a good 32-bit mix, also used to hash (seed, index) pairs. */
export function mix32(value: number): number {
  let z = (value + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** A deterministic 32-bit hash of a few integers. */
export function hash32(...values: number[]): number {
  let h = 0x12345678;
  for (const v of values) h = mix32(h ^ mix32(v | 0) ^ mix32(Math.floor(v / 4294967296)));
  return h;
}

export function createRandom(...seed: number[]): Random {
  let a = hash32(...seed, 1);
  let b = hash32(...seed, 2);
  let c = hash32(...seed, 3);
  let d = 1;
  const u32 = (): number => {
    a >>>= 0;
    b >>>= 0;
    c >>>= 0;
    d >>>= 0;
    const t = (a + b + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 12; i++) u32();
  const next = () => u32() / 4294967296;
  return {
    next,
    u32,
    int: (n) => Math.floor(next() * n),
    chance: (p) => next() < p,
    pick: (items) => items[Math.floor(next() * items.length)]!,
  };
}
