//! Strings of one pending batch (customers, group values, UNIQUE members) as
//! small integers: rollup keys hash and compare as integers, and each text is
//! held once however many rollups and members name it.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

#[derive(Default)]
pub struct Interner {
    table: HashTable<u32>,
    strings: Vec<Box<str>>,
    bytes: usize,
}

impl Interner {
    fn hash(text: &str) -> u64 {
        FxBuildHasher.hash_one(text)
    }

    pub fn id(&mut self, text: &str) -> u32 {
        let hash = Self::hash(text);
        let strings = &self.strings;
        if let Some(&id) = self.table.find(hash, |&id| &*strings[id as usize] == text) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(text.into());
        self.bytes += text.len();
        let strings = &self.strings;
        self.table
            .insert_unique(hash, id, |&i| Self::hash(&strings[i as usize]));
        id
    }

    pub fn find(&self, text: &str) -> Option<u32> {
        let strings = &self.strings;
        self.table
            .find(Self::hash(text), |&id| &*strings[id as usize] == text)
            .copied()
    }

    pub fn text(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// Heap bytes held (for the memory bench).
    pub fn allocated(&self) -> usize {
        self.bytes + self.strings.capacity() * 16 + self.table.capacity() * 5
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
        for n in 0..10_000 {
            i.id(&format!("m{n}"));
        }
        assert_eq!(
            i.find("m9999").map(|id| i.text(id).to_string()),
            Some("m9999".into())
        );
        assert_eq!(i.len(), 10_002);
    }
}
