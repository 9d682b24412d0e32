//! One accumulator per aggregation kind: initialise, add, merge, encode.
//!
//! A new kind adds a variant here and an arm in each of these methods, and
//! nowhere else: deltas.rs and the flush only call them.
//!
//! - COUNT: the number of events;
//! - SUM: the events and an exact sum, an i64 at a decimal scale while it
//!   fits, an exact big decimal after (`number::Sum`);
//! - UNIQUE: the events and the set of member ids (interned strings).

use num_bigint::BigInt;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::metric::Kind;
use crate::number::{Amount, Sum};

/// What one event brings to one metric.
#[derive(Debug, Clone)]
pub enum Operand {
    One,
    Amount(Amount),
    Big(BigInt, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumAcc {
    pub events: u32,
    scale: u8,
    small: i64,
    big: Option<Box<Sum>>,
}

const POW10: [i64; 19] = {
    let mut table = [1i64; 19];
    let mut i = 1;
    while i < 19 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

fn scaled(value: i64, by: u8) -> Option<i64> {
    POW10.get(by as usize).and_then(|p| value.checked_mul(*p))
}

impl SumAcc {
    fn zero() -> SumAcc {
        SumAcc {
            events: 0,
            scale: 0,
            small: 0,
            big: None,
        }
    }

    fn spill(&mut self) -> &mut Sum {
        let (small, scale) = (self.small, self.scale);
        self.big.get_or_insert_with(|| {
            Box::new(Sum::Small {
                coefficient: i128::from(small),
                scale,
            })
        })
    }

    fn add_amount(&mut self, amount: &Amount) {
        if self.big.is_none() {
            if let Ok(coefficient) = i64::try_from(amount.coefficient) {
                let target = self.scale.max(amount.scale);
                let mine = scaled(self.small, target - self.scale);
                let theirs = scaled(coefficient, target - amount.scale);
                if let Some(total) = mine.zip(theirs).and_then(|(a, b)| a.checked_add(b)) {
                    self.small = total;
                    self.scale = target;
                    return;
                }
            }
        }
        self.spill().add_amount(amount);
    }

    fn add_big(&mut self, amount: &BigInt, scale: u8) {
        self.spill().add_big(amount, scale);
    }

    fn merge(&mut self, other: &SumAcc) {
        self.events += other.events;
        match &other.big {
            Some(big) => self.spill().merge(big),
            None => self.add_amount(&Amount {
                coefficient: i128::from(other.small),
                scale: other.scale,
            }),
        }
    }

    pub fn sum(&self) -> Sum {
        match &self.big {
            Some(big) => (**big).clone(),
            None => Sum::Small {
                coefficient: i128::from(self.small),
                scale: self.scale,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueAcc {
    pub events: u32,
    pub members: FxHashSet<u32>,
}

/// A rollup's accumulator in its table (each kind's rows are a map of their own).
pub enum AccMut<'a> {
    Count(&'a mut u64),
    Sum(&'a mut SumAcc),
    Unique(&'a mut UniqueAcc),
}

impl AccMut<'_> {
    /// Add one event; true if it brought a new UNIQUE member.
    pub fn add(self, operand: &Operand, member: Option<u32>) -> bool {
        match self {
            AccMut::Count(n) => {
                *n += 1;
                false
            }
            AccMut::Sum(s) => {
                s.events += 1;
                match operand {
                    Operand::Amount(a) => s.add_amount(a),
                    Operand::Big(b, scale) => s.add_big(b, *scale),
                    Operand::One => {}
                }
                false
            }
            AccMut::Unique(u) => {
                u.events += 1;
                member.is_some_and(|m| u.members.insert(m))
            }
        }
    }

    /// Fold `other` (of the same kind; members already in this batch's ids)
    /// in; returns how many members are new here.
    pub fn merge(self, other: AccRef<'_>, mut member: impl FnMut(u32) -> u32) -> u64 {
        match (self, other) {
            (AccMut::Count(a), AccRef::Count(b)) => {
                *a += b;
                0
            }
            (AccMut::Sum(a), AccRef::Sum(b)) => {
                a.merge(b);
                0
            }
            (AccMut::Unique(a), AccRef::Unique(b)) => {
                a.events += b.events;
                let before = a.members.len();
                a.members.extend(b.members.iter().map(|&m| member(m)));
                (a.members.len() - before) as u64
            }
            _ => unreachable!("one table holds one kind"),
        }
    }
}

/// A rollup's accumulator, read.
#[derive(Clone, Copy)]
pub enum AccRef<'a> {
    Count(u64),
    Sum(&'a SumAcc),
    Unique(&'a UniqueAcc),
}

impl AccRef<'_> {
    /// Events that contributed (`event_count`).
    pub fn events(&self) -> u64 {
        match self {
            AccRef::Count(n) => *n,
            AccRef::Sum(s) => u64::from(s.events),
            AccRef::Unique(u) => u64::from(u.events),
        }
    }

    /// The delta's value as the flush writes it; UNIQUE deltas are the
    /// members new to the table, which only the database knows (`None`).
    pub fn value_text(&self) -> Option<String> {
        match self {
            AccRef::Count(n) => Some(n.to_string()),
            AccRef::Sum(s) => Some(s.sum().text()),
            AccRef::Unique(_) => None,
        }
    }

    pub fn members(&self) -> Option<&FxHashSet<u32>> {
        match self {
            AccRef::Unique(u) => Some(&u.members),
            _ => None,
        }
    }

    pub fn member_count(&self) -> u64 {
        self.members().map_or(0, |m| m.len() as u64)
    }

    pub fn allocated(&self) -> usize {
        match self {
            AccRef::Unique(u) => u.members.capacity() * 5,
            AccRef::Sum(SumAcc { big: Some(_), .. }) => 64,
            _ => 0,
        }
    }
}

/// (customer, group, period start), the strings as the batch's ids.
pub type RowKey = (u32, u32, i64);

/// A table's rollups: one map per kind, so each holds only its own size.
pub enum Rows {
    Count(FxHashMap<RowKey, u64>),
    Sum(FxHashMap<RowKey, SumAcc>),
    Unique(FxHashMap<RowKey, UniqueAcc>),
}

impl Rows {
    pub fn new(kind: Kind) -> Rows {
        match kind {
            Kind::Count => Rows::Count(FxHashMap::default()),
            Kind::Sum => Rows::Sum(FxHashMap::default()),
            Kind::Unique => Rows::Unique(FxHashMap::default()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Rows::Count(m) => m.len(),
            Rows::Sum(m) => m.len(),
            Rows::Unique(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The accumulator of `key`, made (empty) if new; true if it was.
    pub fn entry(&mut self, key: RowKey) -> (AccMut<'_>, bool) {
        use std::collections::hash_map::Entry;
        fn slot<V>(
            m: &mut FxHashMap<RowKey, V>,
            key: RowKey,
            empty: impl FnOnce() -> V,
        ) -> (&mut V, bool) {
            match m.entry(key) {
                Entry::Occupied(e) => (e.into_mut(), false),
                Entry::Vacant(e) => (e.insert(empty()), true),
            }
        }
        match self {
            Rows::Count(m) => {
                let (n, new) = slot(m, key, || 0);
                (AccMut::Count(n), new)
            }
            Rows::Sum(m) => {
                let (s, new) = slot(m, key, SumAcc::zero);
                (AccMut::Sum(s), new)
            }
            Rows::Unique(m) => {
                let (u, new) = slot(m, key, || UniqueAcc {
                    events: 0,
                    members: FxHashSet::default(),
                });
                (AccMut::Unique(u), new)
            }
        }
    }

    pub fn get(&self, key: &RowKey) -> Option<AccRef<'_>> {
        match self {
            Rows::Count(m) => m.get(key).map(|n| AccRef::Count(*n)),
            Rows::Sum(m) => m.get(key).map(AccRef::Sum),
            Rows::Unique(m) => m.get(key).map(AccRef::Unique),
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (RowKey, AccRef<'_>)> + '_> {
        match self {
            Rows::Count(m) => Box::new(m.iter().map(|(k, n)| (*k, AccRef::Count(*n)))),
            Rows::Sum(m) => Box::new(m.iter().map(|(k, s)| (*k, AccRef::Sum(s)))),
            Rows::Unique(m) => Box::new(m.iter().map(|(k, u)| (*k, AccRef::Unique(u)))),
        }
    }

    /// Heap bytes of the map itself (its capacity), for the memory bench.
    pub fn allocated(&self) -> usize {
        fn bytes<V>(m: &FxHashMap<RowKey, V>) -> usize {
            m.capacity() * (std::mem::size_of::<(RowKey, V)>() + 1)
        }
        match self {
            Rows::Count(m) => bytes(m),
            Rows::Sum(m) => bytes(m),
            Rows::Unique(m) => bytes(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::{bounded, Decimal};

    fn amount(text: &str) -> Operand {
        Operand::Amount(bounded(&Decimal::parse(text)).unwrap())
    }

    const KEY: RowKey = (0, 0, 0);

    fn add(rows: &mut Rows, operand: &Operand, member: Option<u32>) -> bool {
        rows.entry(KEY).0.add(operand, member)
    }

    #[test]
    fn sums_stay_exact_across_scales_and_sizes() {
        let mut rows = Rows::new(Kind::Sum);
        for _ in 0..10 {
            add(&mut rows, &amount("0.1"), None);
        }
        assert_eq!(rows.get(&KEY).unwrap().value_text().as_deref(), Some("1"));
        add(&mut rows, &amount("9223372036854775807"), None);
        add(&mut rows, &amount("9223372036854775807"), None);
        let acc = rows.get(&KEY).unwrap();
        assert_eq!(acc.value_text().as_deref(), Some("18446744073709551615"));
        assert_eq!(acc.events(), 12);
        let mut other = Rows::new(Kind::Sum);
        add(&mut other, &amount("-0.05"), None);
        add(&mut other, &amount("1e-30"), None);
        let theirs = other.get(&KEY).unwrap();
        rows.entry(KEY).0.merge(theirs, |m| m);
        assert_eq!(
            rows.get(&KEY).unwrap().value_text().as_deref(),
            Some("18446744073709551614.950000000000000000000000000001")
        );
    }

    #[test]
    fn unique_counts_new_members_once() {
        let mut a = Rows::new(Kind::Unique);
        assert!(add(&mut a, &Operand::One, Some(1)));
        assert!(!add(&mut a, &Operand::One, Some(1)));
        assert!(add(&mut a, &Operand::One, Some(2)));
        let mut b = Rows::new(Kind::Unique);
        add(&mut b, &Operand::One, Some(2));
        assert_eq!(a.entry(KEY).0.merge(b.get(&KEY).unwrap(), |m| m), 0);
        let mut c = Rows::new(Kind::Unique);
        add(&mut c, &Operand::One, Some(3));
        assert_eq!(a.entry(KEY).0.merge(c.get(&KEY).unwrap(), |m| m), 1);
        let acc = a.get(&KEY).unwrap();
        assert_eq!((acc.events(), acc.member_count()), (5, 3));
    }
}
