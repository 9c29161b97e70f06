// Preloaded with `node --require` (via NODE_OPTIONS) so test peers that listen on every
// interface bind to 127.0.0.1 only. Unix-socket and handle forms of listen() are left alone.
"use strict";
const net = require("net");

const LOOPBACK = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first !== null && typeof first === "object" && !Array.isArray(first)) {
    if (first.path === undefined && first.fd === undefined && first._handle === undefined) {
      args[0] = { ...first, host: LOOPBACK };
    }
  } else if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    const rest = args.slice(1);
    if (typeof rest[0] === "string") rest.shift(); // a host the program chose
    args = [Number(first), LOOPBACK, ...rest];
  } else if (first === undefined || typeof first === "function") {
    args = [0, LOOPBACK, ...args];
  }
  return originalListen.apply(this, args);
};
