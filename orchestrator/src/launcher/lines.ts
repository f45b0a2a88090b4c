/** Split a byte stream into lines, keeping a partial last line until it completes. */
import { StringDecoder } from "node:string_decoder";
import type { Readable } from "node:stream";

/** Calls `onLine` for every complete line of `stream`, and the remainder at its end. */
export function forEachLine(stream: Readable, onLine: (line: string) => void): void {
  const decoder = new StringDecoder("utf8");
  let buffer = "";
  stream.on("data", (chunk: Buffer) => {
    buffer += decoder.write(chunk);
    let nl = buffer.indexOf("\n");
    while (nl >= 0) {
      onLine(buffer.slice(0, nl).replace(/\r$/, ""));
      buffer = buffer.slice(nl + 1);
      nl = buffer.indexOf("\n");
    }
  });
  stream.on("end", () => {
    buffer += decoder.end();
    if (buffer.length > 0) onLine(buffer);
    buffer = "";
  });
}
