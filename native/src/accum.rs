//! One accumulator per aggregation kind: initialise, add, merge, encode.
//!
//! A new kind adds a variant here and an arm in each of these methods, and
//! nowhere else: deltas.rs and the flush only call them.
//!
//! - COUNT: the number of events;
//! - SUM: the events and an exact sum, an i64 at a decimal scale while it
//!   fits, an exact big decimal after (`number::Sum`);
//! - UNIQUE: the events and the set of member ids (interned strings);
//! - MAX, MIN: the events and the exact greatest (least) value;
//! - AVG: the events and their exact sum (the value is their quotient,
//!   `Sum::average`, worked out where it is read);
//! - LATEST: the events and the value of the one with the greatest
//!   (timestamp, id), with that timestamp and id, so that any order of
//!   arrival and any split into batches give the same winner.

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

impl Operand {
    fn value(&self) -> Sum {
        match self {
            Operand::Amount(a) => Sum::of_amount(a),
            Operand::Big(b, scale) => Sum::of_big(b, *scale),
            Operand::One => Sum::default(),
        }
    }
}

/// When the event happened and its id: LATEST's order.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'e> {
    pub micros: i64,
    pub id: &'e str,
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

/// MAX or MIN: the value that wins so far (the table's kind says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtremeAcc {
    pub events: u32,
    pub value: Sum,
}

impl ExtremeAcc {
    fn empty() -> ExtremeAcc {
        ExtremeAcc {
            events: 0,
            value: Sum::default(),
        }
    }

    fn offer(&mut self, value: Sum, events: u32, greatest: bool) {
        let wins = self.events == 0 || {
            let order = value.compare(&self.value);
            if greatest {
                order.is_gt()
            } else {
                order.is_lt()
            }
        };
        if wins {
            self.value = value;
        }
        self.events += events;
    }
}

/// LATEST's value: a number, or a STRING metric's text (an interned id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Latest {
    Number(Sum),
    Text(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestAcc {
    pub events: u32,
    pub micros: i64,
    /// The winner's event id; its buffer is reused when a later event wins.
    pub id: String,
    pub value: Latest,
}

impl LatestAcc {
    fn empty() -> LatestAcc {
        LatestAcc {
            events: 0,
            micros: i64::MIN,
            id: String::new(),
            value: Latest::Number(Sum::default()),
        }
    }

    /// Whether (micros, id) comes after the winner: ids by code point,
    /// which is UTF-8 byte order (PostgreSQL's COLLATE "C").
    fn later(&self, micros: i64, id: &str) -> bool {
        self.events == 0 || (micros, id) > (self.micros, self.id.as_str())
    }

    fn offer(&mut self, arrival: Arrival<'_>, value: impl FnOnce() -> Latest, events: u32) {
        if self.later(arrival.micros, arrival.id) {
            self.micros = arrival.micros;
            self.id.clear();
            self.id.push_str(arrival.id);
            self.value = value();
        }
        self.events += events;
    }
}

/// A rollup's accumulator in its table (each kind's rows are a map of their own).
pub enum AccMut<'a> {
    Count(&'a mut u64),
    Sum(&'a mut SumAcc),
    Unique(&'a mut UniqueAcc),
    Max(&'a mut ExtremeAcc),
    Min(&'a mut ExtremeAcc),
    Avg(&'a mut SumAcc),
    Latest(&'a mut LatestAcc),
}

impl AccMut<'_> {
    /// Add one event; true if it brought a new UNIQUE member. `member` is
    /// UNIQUE's member, or a STRING LATEST's text.
    pub fn add(self, operand: &Operand, member: Option<u32>, arrival: Arrival<'_>) -> bool {
        match self {
            AccMut::Count(n) => {
                *n += 1;
                false
            }
            AccMut::Sum(s) | AccMut::Avg(s) => {
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
            AccMut::Max(x) => {
                x.offer(operand.value(), 1, true);
                false
            }
            AccMut::Min(x) => {
                x.offer(operand.value(), 1, false);
                false
            }
            AccMut::Latest(l) => {
                let value = || match member {
                    Some(text) => Latest::Text(text),
                    None => Latest::Number(operand.value()),
                };
                l.offer(arrival, value, 1);
                false
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
            (AccMut::Sum(a), AccRef::Sum(b)) | (AccMut::Avg(a), AccRef::Avg(b)) => {
                a.merge(b);
                0
            }
            (AccMut::Max(a), AccRef::Max(b)) => {
                a.offer(b.value.clone(), b.events, true);
                0
            }
            (AccMut::Min(a), AccRef::Min(b)) => {
                a.offer(b.value.clone(), b.events, false);
                0
            }
            (AccMut::Latest(a), AccRef::Latest(b)) => {
                let arrival = Arrival {
                    micros: b.micros,
                    id: &b.id,
                };
                let value = || match &b.value {
                    Latest::Text(t) => Latest::Text(member(*t)),
                    number => number.clone(),
                };
                a.offer(arrival, value, b.events);
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
    Max(&'a ExtremeAcc),
    Min(&'a ExtremeAcc),
    Avg(&'a SumAcc),
    Latest(&'a LatestAcc),
}

impl AccRef<'_> {
    /// Events that contributed (`event_count`).
    pub fn events(&self) -> u64 {
        match self {
            AccRef::Count(n) => *n,
            AccRef::Sum(s) | AccRef::Avg(s) => u64::from(s.events),
            AccRef::Unique(u) => u64::from(u.events),
            AccRef::Max(x) | AccRef::Min(x) => u64::from(x.events),
            AccRef::Latest(l) => u64::from(l.events),
        }
    }

    /// The delta's numeric value as the flush writes it: UNIQUE deltas are
    /// the members new to the table, which only the database knows, and a
    /// STRING LATEST has none (`None` for both). AVG's is the rounded
    /// quotient of this delta alone (the flush works out the stored one).
    pub fn value_text(&self) -> Option<String> {
        match self {
            AccRef::Count(n) => Some(n.to_string()),
            AccRef::Sum(s) => Some(s.sum().text()),
            AccRef::Unique(_) => None,
            AccRef::Max(x) | AccRef::Min(x) => Some(x.value.text()),
            AccRef::Avg(s) => Some(s.sum().average(u64::from(s.events)).text()),
            AccRef::Latest(l) => match &l.value {
                Latest::Number(n) => Some(n.text()),
                Latest::Text(_) => None,
            },
        }
    }

    /// AVG's exact sum.
    pub fn sum_text(&self) -> Option<String> {
        match self {
            AccRef::Avg(s) => Some(s.sum().text()),
            _ => None,
        }
    }

    /// LATEST's winner: (timestamp in POSIX microseconds, event id, STRING text id).
    pub fn latest(&self) -> Option<(i64, &str, Option<u32>)> {
        match self {
            AccRef::Latest(l) => Some((
                l.micros,
                l.id.as_str(),
                match l.value {
                    Latest::Text(t) => Some(t),
                    Latest::Number(_) => None,
                },
            )),
            _ => None,
        }
    }

    /// Interned strings this accumulator holds besides its key (members, a
    /// STRING LATEST's text), for re-interning on merge.
    pub fn texts(&self) -> Vec<u32> {
        match self {
            AccRef::Unique(u) => u.members.iter().copied().collect(),
            AccRef::Latest(LatestAcc {
                value: Latest::Text(t),
                ..
            }) => vec![*t],
            _ => Vec::new(),
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
            AccRef::Sum(SumAcc { big: Some(_), .. }) | AccRef::Avg(SumAcc { big: Some(_), .. }) => {
                64
            }
            AccRef::Latest(l) => l.id.capacity(),
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
    Max(FxHashMap<RowKey, ExtremeAcc>),
    Min(FxHashMap<RowKey, ExtremeAcc>),
    Avg(FxHashMap<RowKey, SumAcc>),
    Latest(FxHashMap<RowKey, LatestAcc>),
}

/// Applies `$body` to the map of any variant of `Rows`.
macro_rules! each_map {
    ($rows:expr, $m:ident => $body:expr) => {
        match $rows {
            Rows::Count($m) => $body,
            Rows::Sum($m) => $body,
            Rows::Unique($m) => $body,
            Rows::Max($m) => $body,
            Rows::Min($m) => $body,
            Rows::Avg($m) => $body,
            Rows::Latest($m) => $body,
        }
    };
}

impl Rows {
    pub fn new(kind: Kind) -> Rows {
        match kind {
            Kind::Count => Rows::Count(FxHashMap::default()),
            Kind::Sum => Rows::Sum(FxHashMap::default()),
            Kind::Unique => Rows::Unique(FxHashMap::default()),
            Kind::Max => Rows::Max(FxHashMap::default()),
            Kind::Min => Rows::Min(FxHashMap::default()),
            Kind::Avg => Rows::Avg(FxHashMap::default()),
            Kind::Latest | Kind::LatestText => Rows::Latest(FxHashMap::default()),
        }
    }

    pub fn len(&self) -> usize {
        each_map!(self, m => m.len())
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
            Rows::Max(m) => {
                let (x, new) = slot(m, key, ExtremeAcc::empty);
                (AccMut::Max(x), new)
            }
            Rows::Min(m) => {
                let (x, new) = slot(m, key, ExtremeAcc::empty);
                (AccMut::Min(x), new)
            }
            Rows::Avg(m) => {
                let (s, new) = slot(m, key, SumAcc::zero);
                (AccMut::Avg(s), new)
            }
            Rows::Latest(m) => {
                let (l, new) = slot(m, key, LatestAcc::empty);
                (AccMut::Latest(l), new)
            }
        }
    }

    pub fn get(&self, key: &RowKey) -> Option<AccRef<'_>> {
        match self {
            Rows::Count(m) => m.get(key).map(|n| AccRef::Count(*n)),
            Rows::Sum(m) => m.get(key).map(AccRef::Sum),
            Rows::Unique(m) => m.get(key).map(AccRef::Unique),
            Rows::Max(m) => m.get(key).map(AccRef::Max),
            Rows::Min(m) => m.get(key).map(AccRef::Min),
            Rows::Avg(m) => m.get(key).map(AccRef::Avg),
            Rows::Latest(m) => m.get(key).map(AccRef::Latest),
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (RowKey, AccRef<'_>)> + '_> {
        match self {
            Rows::Count(m) => Box::new(m.iter().map(|(k, n)| (*k, AccRef::Count(*n)))),
            Rows::Sum(m) => Box::new(m.iter().map(|(k, s)| (*k, AccRef::Sum(s)))),
            Rows::Unique(m) => Box::new(m.iter().map(|(k, u)| (*k, AccRef::Unique(u)))),
            Rows::Max(m) => Box::new(m.iter().map(|(k, x)| (*k, AccRef::Max(x)))),
            Rows::Min(m) => Box::new(m.iter().map(|(k, x)| (*k, AccRef::Min(x)))),
            Rows::Avg(m) => Box::new(m.iter().map(|(k, s)| (*k, AccRef::Avg(s)))),
            Rows::Latest(m) => Box::new(m.iter().map(|(k, l)| (*k, AccRef::Latest(l)))),
        }
    }

    /// Heap bytes of the map itself (its capacity), for the memory bench.
    pub fn allocated(&self) -> usize {
        fn bytes<V>(m: &FxHashMap<RowKey, V>) -> usize {
            m.capacity() * (std::mem::size_of::<(RowKey, V)>() + 1)
        }
        each_map!(self, m => bytes(m))
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

    const AT: Arrival<'static> = Arrival { micros: 0, id: "e" };

    fn add(rows: &mut Rows, operand: &Operand, member: Option<u32>) -> bool {
        rows.entry(KEY).0.add(operand, member, AT)
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

    fn value(rows: &Rows) -> (u64, String) {
        let acc = rows.get(&KEY).unwrap();
        (acc.events(), acc.value_text().unwrap_or_default())
    }

    #[test]
    fn max_and_min_keep_the_exact_extreme_whatever_the_order() {
        let values = ["1.5", "-2", "1e30", "0.000000000000000000000000000001", "3"];
        for kind in [Kind::Max, Kind::Min] {
            let mut whole = Rows::new(kind);
            for v in values {
                add(&mut whole, &amount(v), None);
            }
            let mut left = Rows::new(kind);
            let mut right = Rows::new(kind);
            for v in values.iter().rev().take(2) {
                add(&mut left, &amount(v), None);
            }
            for v in values.iter().take(3) {
                add(&mut right, &amount(v), None);
            }
            left.entry(KEY).0.merge(right.get(&KEY).unwrap(), |m| m);
            assert_eq!(value(&whole), value(&left));
            let expected = if kind == Kind::Max {
                "1000000000000000000000000000000"
            } else {
                "-2"
            };
            assert_eq!(value(&whole), (5, expected.to_string()));
        }
    }

    #[test]
    fn avg_is_the_rounded_quotient_of_the_exact_sum() {
        let mut rows = Rows::new(Kind::Avg);
        for v in ["1", "1", "0"] {
            add(&mut rows, &amount(v), None);
        }
        assert_eq!(value(&rows), (3, "0.666666666667".to_string()));
        assert_eq!(rows.get(&KEY).unwrap().sum_text().as_deref(), Some("2"));
    }

    #[test]
    fn latest_is_the_greatest_timestamp_then_id() {
        let events = [
            (5, "b", "1"),
            (5, "a", "2"),
            (9, "a", "3"),
            (2, "z", "4"),
            (9, "b", "5"),
            (9, "ab", "6"),
        ];
        let mut orders: Vec<Vec<usize>> = vec![(0..6).collect(), (0..6).rev().collect()];
        orders.push(vec![3, 1, 5, 0, 4, 2]);
        for order in orders {
            let mut rows = Rows::new(Kind::Latest);
            for &i in &order {
                let (micros, id, v) = events[i];
                rows.entry(KEY)
                    .0
                    .add(&amount(v), None, Arrival { micros, id });
            }
            let acc = rows.get(&KEY).unwrap();
            assert_eq!(acc.value_text().as_deref(), Some("5"));
            assert_eq!(acc.latest(), Some((9, "b", None)));
            assert_eq!(acc.events(), 6);
        }
        let mut texts = Rows::new(Kind::LatestText);
        texts
            .entry(KEY)
            .0
            .add(&Operand::One, Some(7), Arrival { micros: 1, id: "x" });
        texts
            .entry(KEY)
            .0
            .add(&Operand::One, Some(8), Arrival { micros: 0, id: "y" });
        let mut other = Rows::new(Kind::LatestText);
        other
            .entry(KEY)
            .0
            .add(&Operand::One, Some(1), Arrival { micros: 1, id: "z" });
        texts
            .entry(KEY)
            .0
            .merge(other.get(&KEY).unwrap(), |m| m + 100);
        let acc = texts.get(&KEY).unwrap();
        assert_eq!(
            (acc.latest(), acc.value_text(), acc.events()),
            (Some((1, "z", Some(101))), None, 3)
        );
    }
}
