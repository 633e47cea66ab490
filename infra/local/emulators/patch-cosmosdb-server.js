// The Cosmos DB emulator (@vercel/cosmosdb-server) answers a point read of a missing document with
// 500 (it dereferences the undefined document). Real Cosmos DB answers 404; patch that one line so
// the adapter is tested against the real service's behaviour. Idempotent; run by `npm ci`.
const fs = require("fs");
const path = require("path");

const file = path.join(__dirname, "node_modules/@vercel/cosmosdb-server/lib/handler/read-document.js");
const before = "if (data[path] !== clientKeys[i]) {";
const after = "if (!data || data[path] !== clientKeys[i]) {";
const source = fs.readFileSync(file, "utf8");
if (source.includes(after)) {
  process.exit(0);
}
if (!source.includes(before)) {
  console.error(`cannot patch ${file}: the expected line is not there (was the package upgraded?)`);
  process.exit(1);
}
fs.writeFileSync(file, source.replace(before, after));
console.log("patched @vercel/cosmosdb-server: a missing document reads as 404");
