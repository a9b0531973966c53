/**
 * What the heartbeat does now. A side that has read nothing for its read timeout gives the
 * connection up; one that has read nothing for half of it sends a Ping (once until it reads
 * again), which the peer answers with a Pong — so a live but quiet peer is never given up.
 */
export function heartbeat(
  now: number,
  lastRead: number,
  lastPing: number,
  readTimeout: number,
): "close" | "ping" | "wait" {
  if (now - lastRead >= readTimeout) return "close";
  if (now - lastRead >= readTimeout / 2 && lastPing <= lastRead) return "ping";
  return "wait";
}
