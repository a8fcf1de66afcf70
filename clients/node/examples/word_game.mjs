#!/usr/bin/env node
// A word game that precomputes its LLM work when a game is created.
//
// A game shows two words; the player guesses the word that links them. When
// the game is created, the app submits, as one group in one round trip, the
// embeddings of the two words and of a sample of other words, the model's
// own answer, and a similarity part that needs the embeddings ("after"):
// once they are done, digestd's pool works out how related the two words
// are compared with the sample, so the vectors never pass through the app.
// All of it on the background lane; nobody waits for it then. When the
// player guesses, the app waits for the group (which moves anything still
// queued to the interactive lane), embeds the guess in a synchronous
// submit, and scores it.
//
//   node word_game.mjs [WORD1 WORD2 GUESS]   (default: lighthouse ledger keeper)
//
// The socket is $DIGESTD_SOCKET, else /run/digestd/control.sock. Exits 1 when
// the precomputed work did not complete.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, DigestdError } from '../index.js';

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

// Words the pair is compared with: how related would two words picked at
// random be?
const SAMPLE = ['river', 'stone', 'lantern', 'orchard', 'violin', 'cloud', 'ticket', 'garden'];

async function createGame(client, words) {
  const game = `game:${randomBytes(4).toString('hex')}`;
  const answer = await client.group(game).submitMany([
    { kind: 'embed', key: `${game}/embed`, input: { texts: words } },
    { kind: 'embed', key: `${game}/sample`, input: { texts: SAMPLE } },
    {
      kind: 'similarity',
      key: `${game}/pair`,
      after: [`${game}/embed`, `${game}/sample`],
      input: {
        a: { part: `${game}/embed`, index: 0 },
        b: { part: `${game}/embed`, index: 1 },
        sample: { part: `${game}/sample` },
      },
    },
    {
      kind: 'generate',
      key: `${game}/answer`,
      input: { prompt: `Which one word links '${words[0]}' and '${words[1]}'? Answer with the word alone.` },
    },
  ], { lane: 'background' });
  if (answer.failed > 0) {
    throw new Error(`${answer.failed} of the game's jobs were not stored: ${JSON.stringify(answer.jobs)}; create the game again`);
  }
  return game;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 0 && args.length !== 3) {
    console.error('usage: word_game.mjs [WORD1 WORD2 GUESS]');
    return 2;
  }
  const [w1, w2, guess] = args.length ? args : ['lighthouse', 'ledger', 'keeper'];
  const client = new Client();
  try {
    let start = performance.now();
    const game = await createGame(client, [w1, w2]);
    console.log(`created ${game}: link '${w1}' and '${w2}' (precompute handed over in ${(performance.now() - start).toFixed(1)} ms)`);

    await sleep(200); // the player thinks
    console.log(`the player guesses '${guess}'`);
    start = performance.now();
    const view = await client.group(game).result({ waitMs: 60000 });
    console.log(`precomputed work: ${view.status}, ${view.ready} of ${view.total} ready after waiting ${Math.round(performance.now() - start)} ms at the guess`);
    if (view.status !== 'completed') {
      const errors = view.parts.map((p) => `${p.key}: ${p.status} ${p.error ?? ''}`);
      console.error(`word_game: the game's precompute did not complete: ${errors.join('; ')}`);
      return 1;
    }
    const parts = Object.fromEntries(view.parts.map((p) => [p.key, p.result]));
    const vectors = parts[`${game}/embed`].embeddings;
    const modelAnswer = parts[`${game}/answer`].text.trim();

    const g = await client.submit('embed', { texts: [guess] }, { key: `${game}/guess`, waitMs: 30000 });
    if (g.status !== 'done') {
      console.error(`word_game: embedding the guess ended ${g.status}: ${g.error ?? ''}`);
      return 1;
    }
    const gv = g.result.embeddings[0];
    if (!(vectors.length === 2 && gv.length === vectors[0].length && gv.length === vectors[1].length)) {
      console.error('word_game: the embeddings do not have one vector per word of one length');
      return 1;
    }
    const score = (cosine(gv, vectors[0]) + cosine(gv, vectors[1])) / 2;
    const pair = parts[`${game}/pair`];
    console.log(`similarity of '${w1}' and '${w2}': ${pair.similarity.toFixed(3)}, closer than ${pair.percentile.toFixed(0)}% of ${pair.null.n} sample words are to '${w1}' (computed in digestd once the embeddings were done)`);
    console.log(`the guess scores ${score.toFixed(3)} (${g.result.dims} dimensions)`);
    console.log(`the model's own answer: ${JSON.stringify(modelAnswer.slice(0, 80))}`);
  } finally {
    client.close();
  }
  console.log('word_game: game created, precomputed and scored');
  return 0;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  console.error(`word_game: ${e instanceof DigestdError ? e.message : e.stack}`);
  process.exitCode = 1;
});
