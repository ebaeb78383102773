// Where the suite's time goes: per-file wall times from a vitest JSON report, longest first.
//   npx vitest run --reporter=default --reporter=json --outputFile=.tmp/vitest.json
//   npx tsx scripts/bench/test-times.ts .tmp/vitest.json [--top N]
import { readFile } from 'node:fs/promises';
import path from 'node:path';

interface Report {
  startTime: number;
  numPassedTests: number;
  numFailedTests: number;
  testResults: { name: string; startTime: number; endTime: number; assertionResults: { status: string }[] }[];
}

async function main(args: string[]): Promise<number> {
  const file = args.find((arg) => !arg.startsWith('--'));
  const topAt = args.indexOf('--top');
  const top = topAt >= 0 ? Number(args[topAt + 1]) : 15;
  if (!file || !Number.isInteger(top) || top < 1) {
    console.error(
      'usage: npx tsx scripts/bench/test-times.ts REPORT.json [--top N]   (REPORT from vitest --reporter=json --outputFile=REPORT.json)',
    );
    return 2;
  }
  const report = JSON.parse(await readFile(file, 'utf8')) as Report;
  const files = report.testResults
    .map((result) => ({
      name: path.relative(process.cwd(), result.name),
      seconds: (result.endTime - result.startTime) / 1000,
      tests: result.assertionResults.length,
    }))
    .sort((a, b) => b.seconds - a.seconds);
  const end = Math.max(...report.testResults.map((result) => result.endTime));
  const sum = files.reduce((total, f) => total + f.seconds, 0);
  console.log(
    `${report.numPassedTests} passed, ${report.numFailedTests} failed in ${files.length} files; ` +
      `${((end - report.startTime) / 1000).toFixed(1)} s from start to the last file's end, ${sum.toFixed(1)} s of file time`,
  );
  for (const f of files.slice(0, top)) console.log(`${f.seconds.toFixed(1).padStart(7)} s ${String(f.tests).padStart(4)} tests  ${f.name}`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`test-times: ${error.message}`);
    process.exit(1);
  },
);
