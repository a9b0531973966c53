/**
 * Picks the first entry of an `Accept`-style list (`"text/x, application/json;q=0.9"`) that is
 * in `supported`, ignoring `;` parameters, spaces and letter case; `*` or `*\/*` picks the first
 * supported entry. The client's order wins, as on every STMP peer.
 */
export function negotiate(accept: string, supported: readonly string[]): string | undefined {
  for (const raw of accept.split(",")) {
    const entry = raw.split(";")[0]!.trim();
    if (entry === "") continue;
    if (entry === "*/*" || entry === "*") {
      if (supported.length > 0) return supported[0];
      continue;
    }
    const found = supported.find((candidate) => candidate.toLowerCase() === entry.toLowerCase());
    if (found) return found;
  }
  return undefined;
}
