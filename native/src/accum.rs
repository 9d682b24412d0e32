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
use rustc_hash::FxHashSet;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acc {
    Count(u64),
    Sum(SumAcc),
    Unique(UniqueAcc),
}

impl Acc {
    /// The accumulator of a new rollup, and whether it holds a new member.
    pub fn first(kind: Kind, operand: &Operand, member: Option<u32>) -> (Acc, bool) {
        let mut acc = match kind {
            Kind::Count => Acc::Count(0),
            Kind::Sum => Acc::Sum(SumAcc::zero()),
            Kind::Unique => Acc::Unique(UniqueAcc {
                events: 0,
                members: FxHashSet::default(),
            }),
        };
        let new = acc.add(operand, member);
        (acc, new)
    }

    /// Add one event; true if it brought a new UNIQUE member.
    pub fn add(&mut self, operand: &Operand, member: Option<u32>) -> bool {
        match self {
            Acc::Count(n) => {
                *n += 1;
                false
            }
            Acc::Sum(s) => {
                s.events += 1;
                match operand {
                    Operand::Amount(a) => s.add_amount(a),
                    Operand::Big(b, scale) => s.add_big(b, *scale),
                    Operand::One => {}
                }
                false
            }
            Acc::Unique(u) => {
                u.events += 1;
                member.is_some_and(|m| u.members.insert(m))
            }
        }
    }

    /// Fold `other` (of the same kind) in; returns how many members are new here.
    pub fn merge(&mut self, other: &Acc) -> u64 {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => {
                *a += b;
                0
            }
            (Acc::Sum(a), Acc::Sum(b)) => {
                a.merge(b);
                0
            }
            (Acc::Unique(a), Acc::Unique(b)) => {
                a.events += b.events;
                let before = a.members.len();
                a.members.extend(b.members.iter().copied());
                (a.members.len() - before) as u64
            }
            _ => unreachable!("one table holds one kind"),
        }
    }

    /// A copy whose member ids are mapped by `f` (another batch's strings).
    pub fn remapped(&self, mut f: impl FnMut(u32) -> u32) -> Acc {
        match self {
            Acc::Unique(u) => Acc::Unique(UniqueAcc {
                events: u.events,
                members: u.members.iter().map(|&m| f(m)).collect(),
            }),
            other => other.clone(),
        }
    }

    pub fn member_count(&self) -> u64 {
        match self {
            Acc::Unique(u) => u.members.len() as u64,
            _ => 0,
        }
    }

    /// Events that contributed (`event_count`).
    pub fn events(&self) -> u64 {
        match self {
            Acc::Count(n) => *n,
            Acc::Sum(s) => u64::from(s.events),
            Acc::Unique(u) => u64::from(u.events),
        }
    }

    /// The delta's value as the flush writes it; UNIQUE deltas are the
    /// members new to the table, which only the database knows (`None`).
    pub fn value_text(&self) -> Option<String> {
        match self {
            Acc::Count(n) => Some(n.to_string()),
            Acc::Sum(s) => Some(s.sum().text()),
            Acc::Unique(_) => None,
        }
    }

    pub fn allocated(&self) -> usize {
        match self {
            Acc::Unique(u) => u.members.capacity() * 5,
            Acc::Sum(SumAcc { big: Some(_), .. }) => 64,
            _ => 0,
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

    #[test]
    fn sums_stay_exact_across_scales_and_sizes() {
        let (mut acc, _) = Acc::first(Kind::Sum, &amount("0.1"), None);
        for _ in 0..9 {
            acc.add(&amount("0.1"), None);
        }
        assert_eq!(acc.value_text().as_deref(), Some("1"));
        acc.add(&amount("9223372036854775807"), None);
        acc.add(&amount("9223372036854775807"), None);
        assert_eq!(acc.value_text().as_deref(), Some("18446744073709551615"));
        assert_eq!(acc.events(), 12);
        let (mut other, _) = Acc::first(Kind::Sum, &amount("-0.05"), None);
        other.add(&amount("1e-30"), None);
        acc.merge(&other);
        assert_eq!(
            acc.value_text().as_deref(),
            Some("18446744073709551614.950000000000000000000000000001")
        );
    }

    #[test]
    fn unique_counts_new_members_once() {
        let (mut a, new) = Acc::first(Kind::Unique, &Operand::One, Some(1));
        assert!(new);
        assert!(!a.add(&Operand::One, Some(1)));
        assert!(a.add(&Operand::One, Some(2)));
        let (b, _) = Acc::first(Kind::Unique, &Operand::One, Some(2));
        assert_eq!(a.merge(&b), 0);
        let (c, _) = Acc::first(Kind::Unique, &Operand::One, Some(3));
        assert_eq!(a.merge(&c), 1);
        assert_eq!((a.events(), a.member_count()), (5, 3));
    }
}
