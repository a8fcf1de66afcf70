#!/usr/bin/env node
// A book reader that summarises each chapter as it is read.
//
// The reader opens a book; each time a chapter is finished, the app hands it
// to digestd (background lane, the story so far as context) and shows the
// summary being written, from the stream of partial text. At the end it
// reads the whole group back: one summary per chapter.
//
//   node book_reader.mjs [BOOK]      (default: samples/the-keepers-ledger.txt)
//
// The socket is $DIGESTD_SOCKET, else /run/digestd/control.sock. Exits 1 when
// a summary did not arrive, or never showed as it was written.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { Client, DigestdError } from '../index.js';

const DEFAULT_BOOK = fileURLToPath(new URL('../../../samples/the-keepers-ledger.txt', import.meta.url));

function chapters(path) {
  const parts = readFileSync(path, 'utf8').split(/^(CHAPTER \d+\. .*)$/m);
  const out = [];
  for (let i = 1; i < parts.length; i += 2) out.push([parts[i].trim(), parts[i + 1].trim()]);
  return out;
}

const shorten = (text, width) => {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= width ? flat : `${flat.slice(0, width - 2)} …`;
};

async function main() {
  const path = process.argv[2] ?? DEFAULT_BOOK;
  const book = chapters(path);
  if (book.length === 0) {
    console.error(`book_reader: no 'CHAPTER N. Title' lines in ${path}; give a book in that form`);
    return 1;
  }
  const group = `book:${randomBytes(4).toString('hex')}`;
  console.log(`reading ${basename(path)}: ${book.length} chapters, summaries in group ${group}`);
  const problems = [];
  const client = new Client();
  const events = await client.subscribe({ group, partial: true, timeoutMs: 60000 });
  try {
    let soFar = '';
    for (const [n, [title, body]] of book.entries()) {
      const key = `${group}/ch:${n + 1}`;
      // The reader has just finished this chapter: hand it over and read on.
      await client.submit('summarize', { title, text: body, context: soFar.slice(-6000), max_words: 60 },
        { key, group, lane: 'background' });
      soFar += `${title}\n${body}\n\n`;
      console.log(`\n${title} read; its summary is being written:`);
      let updates = 0;
      let ended = false;
      while (!ended) {
        const { value: ev, done } = await events.next();
        if (done) {
          problems.push(`${key}: the event stream ended before the job did`);
          break;
        }
        if (ev.key !== key) continue;
        if (ev.event === 'text') {
          updates += 1;
          console.log(`  ... ${shorten(ev.text, 90)}`);
        } else if (['done', 'failed', 'cancelled'].includes(ev.state)) {
          ended = true;
          console.log(`  ${ev.state} after ${Math.round(ev.run_ms ?? 0)} ms, ${updates} partial updates`);
          if (ev.state !== 'done') problems.push(`${key} ended ${ev.state}: ${ev.error ?? ''}`);
          else if (updates === 0) problems.push(`${key}: no partial text arrived`);
        }
      }
      if (!ended) break;
    }
    const view = await client.result({ group, waitMs: 60000 });
    console.log(`\nthe book's summaries (${view.status}, ${view.ready} of ${view.total}):`);
    for (const part of view.parts) {
      const summary = part.result?.summary ?? '';
      console.log(`\n${part.key}:\n    ${summary || part.error || '(none)'}`);
      if (part.status !== 'done' || !summary) problems.push(`${part.key} is ${part.status} without a summary`);
    }
    if (view.status !== 'completed' || view.total !== book.length) {
      problems.push(`group ${group} is ${view.status} with ${view.total} parts, expected completed with ${book.length}`);
    }
  } finally {
    events.close();
    client.close();
  }
  if (problems.length > 0) {
    console.error(`\nbook_reader: ${problems.join('; ')}`);
    return 1;
  }
  console.log('\nbook_reader: every chapter summarised');
  return 0;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  console.error(`book_reader: ${e instanceof DigestdError ? e.message : e.stack}`);
  process.exitCode = 1;
});
