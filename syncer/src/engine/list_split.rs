//! A Kubernetes List's JSON (`{"kind":…,"metadata":{…},"items":[{…},…]}`), fed in chunks as
//! the response arrives, split into each item's JSON, one at a time, and the rest (kind,
//! apiVersion, metadata: a few hundred bytes), so that a whole LIST of 10 000 pods (78 MB) is
//! parsed item by item while it streams in instead of being held and parsed at once.
//!
//! The splitter only tracks nesting, strings and escapes: it does not validate the JSON (each
//! item is parsed by serde afterwards, the rest at the end). Pure: no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;

/// Why a body is not a complete List.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the list ended early (inside {0})")]
    Truncated(&'static str),
    #[error("the list's metadata does not parse: {0}")]
    Head(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Where {
    /// In the list object itself (or before it).
    #[default]
    Head,
    /// Inside the `items` array, between items.
    Between,
    /// Inside an item.
    Item,
}

/// The state carried from one chunk to the next.
#[derive(Debug, Default)]
pub struct ListSplitter {
    /// Open objects and arrays.
    depth: usize,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
    at: Where,
    /// The list without its items' contents (`"items":[]`).
    head: Vec<u8>,
    /// Where the last string of the list object itself started in `head` (a key, before `[`).
    last_string: Option<(usize, usize)>,
    /// The bytes of an item that started in an earlier chunk.
    item: Vec<u8>,
}

impl ListSplitter {
    /// Takes the next chunk of the body; `item` gets each item completed in it, whole.
    pub fn feed<E>(&mut self, chunk: &[u8], mut item: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut i = 0;
        // Where the current item starts in this chunk (None: no item, or one that started in an
        // earlier chunk, whose bytes so far are in `self.item`).
        let mut item_start: Option<usize> = None;
        while i < chunk.len() {
            if self.in_string {
                // Jump to the next quote or backslash (most bytes of a list are inside strings).
                if self.escaped {
                    self.escaped = false;
                    self.keep(&chunk[i..=i]);
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    None => {
                        self.keep(&chunk[i..]);
                        i = chunk.len();
                    }
                    Some(n) => {
                        self.keep(&chunk[i..=i + n]);
                        if chunk[i + n] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                            if self.at == Where::Head
                                && self.depth == 1
                                && let Some((start, _)) = self.last_string
                            {
                                self.last_string = Some((start, self.head.len()));
                            }
                        }
                        i += n + 1;
                    }
                }
                continue;
            }
            let b = chunk[i];
            match (self.at, b) {
                (_, b'"') => {
                    if self.at == Where::Head && self.depth == 1 {
                        self.last_string = Some((self.head.len(), self.head.len()));
                    }
                    self.keep(&chunk[i..=i]);
                    self.in_string = true;
                }
                (Where::Head, b'[') if self.depth == 1 && self.last_key() == Some(b"\"items\"") => {
                    self.head.push(b'[');
                    self.depth += 1;
                    self.at = Where::Between;
                }
                (Where::Between, b'{') => {
                    self.depth += 1;
                    self.at = Where::Item;
                    item_start = Some(i);
                }
                (Where::Between, b']') => {
                    self.head.push(b']');
                    self.depth -= 1;
                    self.at = Where::Head;
                }
                (Where::Between, _) => {} // commas and white space between items
                (Where::Item, b'{' | b'[') => self.depth += 1,
                (Where::Item, b'}' | b']') => {
                    self.depth -= 1;
                    if self.depth == 2 {
                        self.at = Where::Between;
                        match item_start.take() {
                            Some(start) => item(&chunk[start..=i])?,
                            None => {
                                self.item.extend_from_slice(&chunk[..=i]);
                                item(&self.item)?;
                                self.item.clear(); // the allocation serves the next one
                            }
                        }
                    }
                }
                (Where::Item, _) => {}
                (Where::Head, b'{' | b'[') => {
                    self.head.push(b);
                    self.depth += 1;
                }
                (Where::Head, b'}' | b']') => {
                    self.head.push(b);
                    self.depth = self.depth.saturating_sub(1);
                }
                (Where::Head, _) => self.head.push(b),
            }
            i += 1;
        }
        // An item still open: keep what this chunk holds of it.
        if self.at == Where::Item {
            self.item.extend_from_slice(&chunk[item_start.unwrap_or(0)..]);
        }
        Ok(())
    }

    /// Bytes inside a string: the head keeps its own, an item's are taken by range.
    fn keep(&mut self, bytes: &[u8]) {
        if self.at == Where::Head {
            self.head.extend_from_slice(bytes);
        }
    }

    fn last_key(&self) -> Option<&[u8]> {
        let (start, end) = self.last_string?;
        self.head.get(start..end)
    }

    /// The list's metadata, once the whole body was fed.
    pub fn finish(self) -> Result<ListMeta, SplitError> {
        if self.in_string || self.depth != 0 || self.at != Where::Head || self.head.is_empty() {
            let inside = match self.at {
                Where::Head => "the list",
                Where::Between => "the items",
                Where::Item => "an item",
            };
            return Err(SplitError::Truncated(inside));
        }
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(default)]
            metadata: ListMeta,
        }
        serde_json::from_slice::<Head>(&self.head)
            .map(|h| h.metadata)
            .map_err(|e| SplitError::Head(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    /// The items and metadata of `body` fed in chunks of `size` bytes.
    fn split(body: &[u8], size: usize) -> (Vec<serde_json::Value>, Result<ListMeta, SplitError>) {
        let mut s = ListSplitter::default();
        let mut items = Vec::new();
        for chunk in body.chunks(size.max(1)) {
            s.feed(chunk, |item| {
                items.push(serde_json::from_slice::<serde_json::Value>(item).unwrap());
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        (items, s.finish())
    }

    fn list_json() -> (serde_json::Value, Vec<serde_json::Value>) {
        let items = vec![
            serde_json::json!({"metadata": {"name": "a", "annotations": {"q": "a \"quoted\" ] } [ { text", "items": "[{"}},
                               "spec": {"containers": [{"name": "c", "args": ["\\", "}", "]"]}]}}),
            serde_json::json!({"metadata": {"name": "b"}, "data": {"k": "\u{00e9}\u{4e2d}"}}),
            serde_json::json!({}),
            serde_json::json!({"metadata": {"name": "c", "labels": {}}, "x": [[], [{}], {"y": [1, 2]}]}),
        ];
        let list = serde_json::json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "4711", "continue": ""},
            "items": items,
        });
        (list, items)
    }

    #[test]
    fn every_item_comes_whole_whatever_the_chunk_size() {
        let (list, want) = list_json();
        let compact = serde_json::to_vec(&list).unwrap();
        let pretty = serde_json::to_vec_pretty(&list).unwrap();
        for body in [&compact, &pretty] {
            for size in [1, 2, 3, 7, 64, 4096, body.len()] {
                let (items, meta) = split(body, size);
                assert_eq!(items, want, "chunks of {size}");
                assert_eq!(meta.unwrap().resource_version.as_deref(), Some("4711"));
            }
        }
    }

    #[test]
    fn metadata_after_the_items_and_an_empty_list_are_read() {
        let body = br#"{"items":[{"a":1}],"kind":"List","metadata":{"resourceVersion":"9"}}"#;
        let (items, meta) = split(body, 5);
        assert_eq!(items, [serde_json::json!({"a": 1})]);
        assert_eq!(meta.unwrap().resource_version.as_deref(), Some("9"));
        let (items, meta) = split(
            br#"{"kind":"PodList","metadata":{"resourceVersion":"3"},"items":[]}"#,
            4,
        );
        assert!(items.is_empty());
        assert_eq!(meta.unwrap().resource_version.as_deref(), Some("3"));
    }

    #[test]
    fn a_key_or_value_named_items_elsewhere_is_not_the_items() {
        let body =
            br#"{"metadata":{"items":[{"no":1}],"resourceVersion":"5"},"kind":"items","items":[{"yes":1}]}"#;
        let (items, meta) = split(body, 3);
        assert_eq!(items, [serde_json::json!({"yes": 1})]);
        assert_eq!(meta.unwrap().resource_version.as_deref(), Some("5"));
    }

    #[test]
    fn a_body_cut_short_is_an_error_not_a_shorter_list() {
        let (list, _) = list_json();
        let body = serde_json::to_vec(&list).unwrap();
        for cut in [0, 10, body.len() / 2, body.len() - 2, body.len() - 1] {
            let (_, meta) = split(&body[..cut], 16);
            assert!(
                matches!(meta, Err(SplitError::Truncated(_))),
                "cut at {cut}: {meta:?}"
            );
        }
    }

    #[test]
    fn an_item_handler_error_stops_the_feed() {
        let mut s = ListSplitter::default();
        let r = s.feed(br#"{"items":[{"a":1},{"b":2}]}"#, |_| Err("refused"));
        assert_eq!(r, Err("refused"));
    }
}
