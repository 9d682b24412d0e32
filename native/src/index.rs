//! The live metrics by event type, compiled from specs, and the registry that
//! gives each metric uid a small id for the life of the process (tables of
//! pending deltas are found by it, across reloads of the definitions).

use rustc_hash::FxHashMap;

use crate::intern::Interner;
use crate::metric::{Filter, FilterValue, Kind, Metric};
use crate::periods::PeriodCaches;

/// A validated definition, as Python hands it over.
#[derive(Debug, Clone)]
pub struct Spec {
    pub uid: String,
    pub event_type: String,
    pub kind: Kind,
    pub value_property: Option<String>,
    pub group_property: Option<String>,
    pub case_sensitive: bool,
    /// (property, negated, listed values)
    pub filters: Vec<(String, bool, Vec<FilterValue>)>,
    /// Unit indexes into metric::UNITS.
    pub units: Vec<u8>,
    pub zone: String,
}

#[derive(Default)]
pub struct Registry {
    ids: FxHashMap<String, u32>,
    pub uids: Vec<String>,
}

impl Registry {
    pub fn id(&mut self, uid: &str) -> u32 {
        if let Some(&id) = self.ids.get(uid) {
            return id;
        }
        let id = self.uids.len() as u32;
        self.ids.insert(uid.to_string(), id);
        self.uids.push(uid.to_string());
        id
    }
}

#[derive(Default)]
pub struct Index {
    pub metrics: Vec<Metric>,
    pub uid_ids: Vec<u32>,
    pub by_event_type: FxHashMap<String, Vec<usize>>,
}

impl Index {
    pub fn compile(
        specs: &[Spec],
        registry: &mut Registry,
        names: &mut Interner,
        caches: &mut PeriodCaches,
    ) -> Index {
        let mut index = Index::default();
        for spec in specs {
            let fold = !spec.case_sensitive;
            let mut filters: Vec<Filter> = spec
                .filters
                .iter()
                .map(|(name, negate, values)| {
                    Filter::new(name.clone(), names.id(name), values, *negate, fold)
                })
                .collect();
            filters.sort_by(|a, b| a.name.cmp(&b.name));
            let mut units = spec.units.clone();
            units.sort_unstable();
            units.dedup();
            let periods = units
                .iter()
                .map(|&u| (u, caches.get(u, &spec.zone)))
                .collect();
            let metric = Metric {
                uid: spec.uid.clone(),
                kind: spec.kind,
                value_property: spec.value_property.as_deref().map(|n| names.id(n)),
                group_property: spec.group_property.as_deref().map(|n| names.id(n)),
                fold,
                filters,
                periods,
            };
            index
                .by_event_type
                .entry(spec.event_type.clone())
                .or_default()
                .push(index.metrics.len());
            index.uid_ids.push(registry.id(&spec.uid));
            index.metrics.push(metric);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }
}
