//! Content negotiation over `Accept`-style lists.

/// Picks the first entry of an `Accept`-style list (`"text/x, application/json;q=0.9"`) that is
/// in `supported`, ignoring `;` parameters such as `q=`, spaces and letter case. `*/*` (or `*`)
/// picks the first supported entry.
///
/// The client's order wins, as in stmp-go; `q` weights are not ranked.
///
/// ```
/// use stmp::wire::negotiate;
///
/// let supported = ["application/protobuf", "application/json", "application/msgpack"];
/// assert_eq!(negotiate("text/x, application/json;q=0.9", &supported), Some("application/json"));
/// assert_eq!(negotiate("APPLICATION/MSGPACK", &supported), Some("application/msgpack"));
/// assert_eq!(negotiate("*/*", &supported), Some("application/protobuf"));
/// assert_eq!(negotiate("application/xml", &supported), None);
/// ```
pub fn negotiate<'a>(accept: &str, supported: &[&'a str]) -> Option<&'a str> {
    accept
        .split(',')
        .map(|entry| entry.split(';').next().unwrap_or_default().trim())
        .filter(|entry| !entry.is_empty())
        .find_map(|entry| {
            if entry == "*/*" || entry == "*" {
                supported.first().copied()
            } else {
                supported
                    .iter()
                    .copied()
                    .find(|candidate| candidate.eq_ignore_ascii_case(entry))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::negotiate;

    #[test]
    fn empty_lists() {
        assert_eq!(negotiate("", &["a/b"]), None);
        assert_eq!(negotiate(" , ;q=1", &["a/b"]), None);
        assert_eq!(negotiate("a/b", &[]), None);
        assert_eq!(negotiate("*/*", &[]), None);
    }

    #[test]
    fn first_of_the_clients_list_wins() {
        assert_eq!(negotiate("b/b, a/a", &["a/a", "b/b"]), Some("b/b"));
    }
}
