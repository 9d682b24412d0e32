//! Strings of one pending batch (customers, group values, UNIQUE members) as
//! small integers: rollup keys hash and compare as integers, and each text is
//! held once however many rollups and members name it, in 64 KiB chunks (no
//! allocation, pointer or length word per string beyond an 8-byte span, and
//! no more than one chunk's slack).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;

#[derive(Default)]
pub struct Interner {
    table: HashTable<u32>,
    chunks: Vec<String>,
    spans: Vec<(u32, u32)>, // (chunk << 16 | offset, len), by id
}

impl Interner {
    fn hash(text: &str) -> u64 {
        FxBuildHasher.hash_one(text)
    }

    fn at<'s>(chunks: &'s [String], spans: &[(u32, u32)], id: u32) -> &'s str {
        let (at, len) = spans[id as usize];
        let offset = (at as usize) & (CHUNK - 1);
        &chunks[(at >> CHUNK_BITS) as usize][offset..offset + len as usize]
    }

    /// Where `text` goes: a chunk with room, or a new one (texts are short:
    /// keys are at most 1 KiB; a longer one gets a chunk of its own size).
    fn place(&mut self, text: &str) -> u32 {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + text.len() <= c.capacity().max(CHUNK));
        if !fits {
            self.chunks
                .push(String::with_capacity(CHUNK.max(text.len())));
        }
        let chunk = self.chunks.len() - 1;
        let last = &mut self.chunks[chunk];
        let offset = last.len();
        last.push_str(text);
        ((chunk as u32) << CHUNK_BITS) | offset as u32
    }

    pub fn id(&mut self, text: &str) -> u32 {
        let hash = Self::hash(text);
        let (chunks, spans) = (&self.chunks, &self.spans);
        if let Some(&id) = self
            .table
            .find(hash, |&id| Self::at(chunks, spans, id) == text)
        {
            return id;
        }
        let id = self.spans.len() as u32;
        let at = self.place(text);
        self.spans.push((at, text.len() as u32));
        let (chunks, spans) = (&self.chunks, &self.spans);
        self.table
            .insert_unique(hash, id, |&i| Self::hash(Self::at(chunks, spans, i)));
        id
    }

    pub fn find(&self, text: &str) -> Option<u32> {
        let (chunks, spans) = (&self.chunks, &self.spans);
        self.table
            .find(Self::hash(text), |&id| Self::at(chunks, spans, id) == text)
            .copied()
    }

    pub fn text(&self, id: u32) -> &str {
        Self::at(&self.chunks, &self.spans, id)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Heap bytes held (for the memory bench).
    pub fn allocated(&self) -> usize {
        let chunks: usize = self.chunks.iter().map(String::capacity).sum();
        chunks + self.spans.capacity() * 8 + self.table.capacity() * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_the_same_id() {
        let mut i = Interner::default();
        let a = i.id("alpha");
        let b = i.id("beta");
        assert_ne!(a, b);
        assert_eq!(i.id("alpha"), a);
        assert_eq!(i.text(b), "beta");
        assert_eq!(i.find("gamma"), None);
        assert_eq!(i.id(""), i.id(""));
        for n in 0..10_000 {
            i.id(&format!("m{n}"));
        }
        assert_eq!(
            i.find("m9999").map(|id| i.text(id).to_string()),
            Some("m9999".into())
        );
        assert_eq!(i.len(), 10_003);
        let long = "x".repeat(3 * CHUNK);
        let id = i.id(&long);
        assert_eq!(i.text(id), long);
        assert_eq!(i.text(a), "alpha");
    }
}
