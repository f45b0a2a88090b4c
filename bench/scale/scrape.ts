/**
 * Scrapes a /metrics URL COUNT times in a row, as Prometheus would, from a
 * process of its own; prints one JSON line: seconds and bytes per scrape,
 * and the number of series (sample lines) of the last one.
 *
 *   node dist/bench/scale/scrape.js http://127.0.0.1:PORT/metrics 5
 */
async function main(url: string, count: number): Promise<void> {
  const seconds: number[] = [];
  const bytes: number[] = [];
  let series = 0;
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    const res = await fetch(url);
    const body = await res.text();
    seconds.push((performance.now() - t0) / 1000);
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    bytes.push(Buffer.byteLength(body));
    series = body.split("\n").filter((l) => l !== "" && !l.startsWith("#")).length;
  }
  process.stdout.write(JSON.stringify({ seconds, bytes, series }) + "\n");
}

const [url, count] = process.argv.slice(2);
if (!url) throw new Error("usage: scrape.js URL [COUNT]");
await main(url, Number(count ?? 1));
