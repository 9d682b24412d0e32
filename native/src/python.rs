//! `tally._native`: the Python API of the core (typed in src/tally/_native.pyi).
//!
//! A batch is two calls: `Core.decode` turns message values into events,
//! rejections and dedup digests; the worker checks the digests against its
//! dedup window; `Core.apply` adds the events that are not duplicates to a
//! `Deltas`. A panic while applying one event is caught and reported for that
//! event alone (it goes to the dead-letter topic as internal_error).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyList, PyTuple};

use crate::copy::CopyWriter;
use crate::deltas;
use crate::digest::digest;
use crate::event::{self, EventStore, Prop, Reads, Segment};
use crate::index::{Index, Registry, Spec};
use crate::metric::{FilterValue, Kind, UNITS};
use crate::periods::{PeriodCaches, Source};
use crate::rows;
use crate::timestamp;

#[pyclass(module = "tally._native", frozen)]
pub struct Limits {
    inner: event::Limits,
}

#[pymethods]
impl Limits {
    #[new]
    #[pyo3(signature = (*, max_bytes, max_lateness_seconds, max_future_seconds, late_detail, future_detail))]
    fn new(
        max_bytes: usize,
        max_lateness_seconds: f64,
        max_future_seconds: f64,
        late_detail: String,
        future_detail: String,
    ) -> Limits {
        let micros = |s: f64| (s * 1e6).min(i64::MAX as f64 / 4.0) as i64;
        Limits {
            inner: event::Limits {
                max_bytes,
                max_lateness_micros: micros(max_lateness_seconds),
                max_future_micros: micros(max_future_seconds),
                late_detail,
                future_detail,
            },
        }
    }
}

struct PySource<'py> {
    callable: &'py Bound<'py, PyAny>,
}

impl Source for PySource<'_> {
    fn bounds(&mut self, unit: &str, zone: &str, second: i64) -> Result<(i64, i64), String> {
        self.callable
            .call1((unit, zone, second))
            .and_then(|r| r.extract::<(i64, i64)>())
            .map_err(|e| format!("period bounds of {unit} in {zone}: {e}"))
    }
}

type Uids = Arc<RwLock<Registry>>;

#[pyclass(module = "tally._native")]
pub struct Core {
    registry: Uids,
    /// Properties any metric has read (names and paths): their ids in events.
    reads: Reads,
    caches: PeriodCaches,
    index: Index,
    bounds: Py<PyAny>,
}

fn filter_value(value: &Bound<'_, PyAny>) -> PyResult<FilterValue> {
    if let Ok(b) = value.extract::<bool>() {
        if value.is_instance_of::<pyo3::types::PyBool>() {
            return Ok(FilterValue::Bool(b));
        }
    }
    if value.is_instance_of::<pyo3::types::PyString>() {
        return Ok(FilterValue::Text(value.extract()?));
    }
    if value.is_instance_of::<pyo3::types::PyInt>() {
        return Ok(FilterValue::Number(value.str()?.extract()?));
    }
    if value.is_instance_of::<pyo3::types::PyFloat>() {
        return Ok(FilterValue::Number(value.repr()?.extract()?));
    }
    Err(PyTypeError::new_err(format!(
        "filter value {value} is not a JSON scalar"
    )))
}

/// A property path: segments, each a key (str) or an index (int).
fn path(item: &Bound<'_, PyAny>) -> PyResult<Vec<Segment>> {
    let mut segments = Vec::new();
    for segment in item.try_iter()? {
        let segment = segment?;
        if segment.is_instance_of::<pyo3::types::PyString>() {
            segments.push(Segment::Key(segment.extract()?));
        } else {
            segments.push(Segment::Index(segment.extract()?));
        }
    }
    if segments.is_empty() {
        return Err(PyValueError::new_err("a property path has no segments"));
    }
    Ok(segments)
}

fn spec(item: &Bound<'_, PyAny>) -> PyResult<Spec> {
    // (uid, event_type, kind, value_path | None, [group paths], case_sensitive,
    //  [(path, negate, [values])], [unit names], zone, value_type,
    //  [(path, present)]); a path is a tuple of str keys and int indexes
    let t = item.cast::<PyTuple>()?;
    let kind: String = t.get_item(2)?.extract()?;
    let value_type: String = t.get_item(9)?.extract()?;
    let mut filters = Vec::new();
    for f in t.get_item(6)?.try_iter()? {
        let f = f?;
        let name = path(&f.get_item(0)?)?;
        let negate: bool = f.get_item(1)?.extract()?;
        let values = f
            .get_item(2)?
            .try_iter()?
            .map(|v| filter_value(&v?))
            .collect::<PyResult<_>>()?;
        filters.push((name, negate, values));
    }
    let mut units = Vec::new();
    for u in t.get_item(7)?.try_iter()? {
        let name: String = u?.extract()?;
        let unit = UNITS
            .iter()
            .position(|&x| x == name)
            .ok_or_else(|| PyValueError::new_err(format!("unknown unit {name}")))?;
        units.push(unit as u8);
    }
    let value = t.get_item(3)?;
    let mut presence = Vec::new();
    for p in t.get_item(10)?.try_iter()? {
        let p = p?;
        presence.push((path(&p.get_item(0)?)?, p.get_item(1)?.extract()?));
    }
    Ok(Spec {
        uid: t.get_item(0)?.extract()?,
        event_type: t.get_item(1)?.extract()?,
        kind: Kind::parse(&kind, &value_type).ok_or_else(|| {
            PyValueError::new_err(format!("unknown aggregation {kind} of {value_type}"))
        })?,
        value_property: if value.is_none() {
            None
        } else {
            Some(path(&value)?)
        },
        group_properties: t
            .get_item(4)?
            .try_iter()?
            .map(|g| path(&g?))
            .collect::<PyResult<_>>()?,
        case_sensitive: t.get_item(5)?.extract()?,
        filters,
        presence,
        units,
        zone: t.get_item(8)?.extract()?,
    })
}

fn now_micros(now: f64) -> i64 {
    (now * 1e6).floor() as i64
}

#[pymethods]
impl Core {
    #[new]
    fn new(bounds: Py<PyAny>) -> Core {
        Core {
            registry: Arc::new(RwLock::new(Registry::default())),
            reads: Reads::default(),
            caches: PeriodCaches::default(),
            index: Index::default(),
            bounds,
        }
    }

    /// Replace the live metrics (validated definitions as spec tuples).
    fn set_metrics(&mut self, specs: &Bound<'_, PyAny>) -> PyResult<()> {
        let specs: Vec<Spec> = specs
            .try_iter()?
            .map(|s| spec(&s?))
            .collect::<PyResult<_>>()?;
        let mut registry = self.registry.write().expect("registry lock");
        self.index = Index::compile(&specs, &mut registry, &mut self.reads, &mut self.caches);
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.index.len()
    }

    /// Decode message values: events, rejections and the events' dedup digests.
    fn decode(&self, values: &Bound<'_, PyList>, now: f64, limits: &Limits) -> PyResult<Batch> {
        let now = now_micros(now);
        let mut batch = Batch::default();
        batch.store.arena.reserve(values.len() * 96);
        for (n, value) in values.iter().enumerate() {
            let raw: Option<&[u8]> = if value.is_none() {
                None
            } else {
                Some(value.cast::<PyBytes>()?.as_bytes())
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                event::decode(
                    raw,
                    now,
                    &limits.inner,
                    &self.reads,
                    false,
                    &mut batch.store,
                )
            }));
            match outcome {
                Ok(Ok(i)) => {
                    let e = batch.store.events[i];
                    let mut out = [0u8; 16];
                    digest(batch.store.text(e.id), &mut out);
                    batch.digests.extend_from_slice(&out);
                    batch.accepted.push(n);
                }
                Ok(Err(rejection)) => {
                    batch
                        .rejections
                        .push((n, rejection.reason.label(), rejection.detail))
                }
                Err(panic) => batch
                    .rejections
                    .push((n, "internal_error", panic_text(&panic))),
            }
        }
        Ok(batch)
    }

    /// Apply a batch's events to `deltas`, but those flagged in `duplicates`
    /// (one byte per accepted event, nonzero = duplicate). Returns
    /// (accepted position, detail) for each event that raised: it changed nothing.
    fn apply(
        &mut self,
        py: Python<'_>,
        deltas: &mut Deltas,
        batch: &Batch,
        duplicates: &[u8],
    ) -> PyResult<Vec<(usize, String)>> {
        if duplicates.len() != batch.store.events.len() {
            return Err(PyValueError::new_err(
                "one duplicate flag per accepted event",
            ));
        }
        let bounds = self.bounds.bind(py);
        let mut source = PySource { callable: bounds };
        let mut failed = Vec::new();
        for (n, event) in batch.store.events.iter().enumerate() {
            if duplicates[n] != 0 {
                continue;
            }
            let (index, caches, inner) = (&self.index, &mut self.caches, &mut deltas.inner);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                inner.add(&batch.store, event, index, caches, &mut source)
            }));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(detail)) => failed.push((n, detail)),
                Err(panic) => failed.push((n, panic_text(&panic))),
            }
        }
        Ok(failed)
    }

    /// One value decoded, for tools: the event as a dict, or (reason, detail).
    fn decode_one<'py>(
        &self,
        py: Python<'py>,
        raw: Option<&[u8]>,
        now: f64,
        limits: &Limits,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut store = EventStore::default();
        match event::decode(
            raw,
            now_micros(now),
            &limits.inner,
            &self.reads,
            true,
            &mut store,
        ) {
            Err(r) => Ok(PyTuple::new(
                py,
                [
                    r.reason.label().into_pyobject(py)?.into_any(),
                    r.detail.into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any()),
            Ok(i) => {
                let e = store.events[i];
                let decimal = py.import("decimal")?.getattr("Decimal")?;
                let props = PyDict::new(py);
                let json = py.import("json")?;
                let loads = json.getattr("loads")?;
                let exact = PyDict::new(py);
                exact.set_item("parse_float", &decimal)?;
                exact.set_item("parse_int", &decimal)?;
                for (k, id, v) in store.props_of(&e) {
                    if event::is_path(*id) {
                        continue; // a path's copy of a nested scalar
                    }
                    let value: Bound<'py, PyAny> = match v {
                        Prop::Nested(s) => loads.call((store.text(*s),), Some(&exact))?,
                        Prop::Null => py.None().into_bound(py),
                        Prop::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
                        Prop::Number(s) => decimal.call1((store.text(*s),))?,
                        Prop::String(s) => store.text(*s).into_pyobject(py)?.into_any(),
                    };
                    props.set_item(store.text(*k), value)?;
                }
                let out = PyDict::new(py);
                out.set_item("id", store.text(e.id))?;
                out.set_item("eventType", store.text(e.event_type))?;
                out.set_item("customerId", store.text(e.customer))?;
                out.set_item("timestamp", e.micros as f64 / 1e6)?;
                out.set_item("properties", props)?;
                Ok(out.into_any())
            }
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string());
    format!("PanicException: {message}")
}

#[pyfunction]
fn parse_timestamp(text: &str) -> Option<f64> {
    timestamp::parse(text).map(|us| us as f64 / 1e6)
}

#[pyfunction]
fn casefold(text: &str) -> String {
    crate::casefold::casefold(text).into_owned()
}

#[pyclass(module = "tally._native")]
#[derive(Default)]
pub struct Batch {
    store: EventStore,
    rejections: Vec<(usize, &'static str, String)>,
    accepted: Vec<usize>,
    digests: Vec<u8>,
}

#[pymethods]
impl Batch {
    /// (record index, reason, detail) of each refused value.
    #[getter]
    fn rejections(&self) -> Vec<(usize, &'static str, String)> {
        self.rejections.clone()
    }

    /// Record index of each accepted event, in order.
    #[getter]
    fn accepted(&self) -> Vec<usize> {
        self.accepted.clone()
    }

    /// 16 bytes (BLAKE2b-128 of the id) per accepted event, in order.
    #[getter]
    fn digests<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.digests)
    }

    fn __len__(&self) -> usize {
        self.store.events.len()
    }
}

#[pyclass(module = "tally._native")]
pub struct Deltas {
    inner: deltas::Deltas,
    registry: Uids,
}

impl Deltas {
    fn uid(&self, id: u32) -> String {
        self.registry.read().expect("registry lock").uids[id as usize].clone()
    }
}

#[pymethods]
impl Deltas {
    #[new]
    fn new(core: &Core) -> Deltas {
        Deltas {
            inner: deltas::Deltas::default(),
            registry: core.registry.clone(),
        }
    }

    fn __len__(&self) -> usize {
        self.inner.size as usize
    }

    #[getter]
    fn events(&self) -> u64 {
        self.inner.events
    }

    #[getter]
    fn unmatched(&self) -> u64 {
        self.inner.unmatched
    }

    #[getter]
    fn members(&self) -> u64 {
        self.inner.members
    }

    /// Events that matched a metric but carried no usable value: (uid, reason) -> count.
    #[getter]
    fn skipped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (&(uid, skip), &n) in &self.inner.skipped {
            out.set_item((self.uid(uid), skip.label()), n)?;
        }
        Ok(out)
    }

    /// Events applied per metric: uid -> count.
    #[getter]
    fn applied<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (&uid, &n) in &self.inner.applied {
            out.set_item(self.uid(uid), n)?;
        }
        Ok(out)
    }

    /// Fold `other` in (other is left as it was).
    fn merge(&mut self, other: &Deltas) {
        self.inner.merge(&other.inner);
    }

    /// Heap bytes the pending rollups hold.
    fn allocated(&self) -> usize {
        self.inner.allocated()
    }

    /// Each pending UNIQUE rollup: ((uid, customer, unit, start, group), period end, [members]).
    #[allow(clippy::type_complexity)]
    fn unique_rollups(&self) -> Vec<((String, &str, &'static str, i64, &str), i64, Vec<&str>)> {
        let mut out = Vec::new();
        for table in self.inner.tables.iter().flatten() {
            if table.kind != Kind::Unique {
                continue;
            }
            let uid = self.uid(table.uid);
            let unit = UNITS[table.unit as usize];
            for ((customer, group, start), acc) in table.rows.iter() {
                let members = acc.members().map_or_else(Vec::new, |m| {
                    m.iter().map(|&id| self.inner.strings.text(id)).collect()
                });
                let key = (
                    uid.clone(),
                    self.inner.strings.text(customer),
                    unit,
                    start,
                    self.inner.strings.text(group),
                );
                out.push((key, table.ends[&start], members));
            }
        }
        out
    }

    /// The pending UNIQUE members as six columns: uid, customer, unit, period start, group, member.
    fn member_columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let cols: [Bound<'py, PyList>; 6] = std::array::from_fn(|_| PyList::empty(py));
        for table in self.inner.tables.iter().flatten() {
            if table.kind != Kind::Unique {
                continue;
            }
            let uid = self.uid(table.uid);
            let unit = UNITS[table.unit as usize];
            for ((customer, group, start), acc) in table.rows.iter() {
                if let Some(members) = acc.members() {
                    for &m in members {
                        cols[0].append(&uid)?;
                        cols[1].append(self.inner.strings.text(customer))?;
                        cols[2].append(unit)?;
                        cols[3].append(start)?;
                        cols[4].append(self.inner.strings.text(group))?;
                        cols[5].append(self.inner.strings.text(m))?;
                    }
                }
            }
        }
        PyTuple::new(py, cols)
    }

    /// The rollup deltas as eight columns: uid, customer, group, unit, period
    /// start, period end, value text, events. A UNIQUE delta's value is the
    /// number of its members new to the table, from `added`
    /// ((uid, customer, unit, start, group) -> count). Rows in key order,
    /// (uid, customer, unit, start, group), strings by their bytes; so are
    /// `kind_columns` and both payloads, which the staged statements rely on.
    fn value_columns<'py>(
        &self,
        py: Python<'py>,
        added: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cols: [Bound<'py, PyList>; 8] = std::array::from_fn(|_| PyList::empty(py));
        rows::value_rows(
            &self.inner,
            |id| self.uid(id),
            |uid, customer, unit, start, group| {
                added_members(added, (uid, customer, unit, start, group))
            },
            |r| {
                cols[0].append(r.uid)?;
                cols[1].append(r.customer)?;
                cols[2].append(r.group)?;
                cols[3].append(r.unit)?;
                cols[4].append(r.start)?;
                cols[5].append(r.end)?;
                cols[6].append(r.value)?;
                cols[7].append(r.events)
            },
        )?;
        PyTuple::new(py, cols)
    }

    /// `value_columns` as one binary COPY payload for the flush's
    /// `tally_flush_values` staging table: (rows, bytes).
    fn value_copy<'py>(
        &self,
        py: Python<'py>,
        added: &Bound<'py, PyDict>,
    ) -> PyResult<(usize, Bound<'py, PyBytes>)> {
        let mut w = CopyWriter::new(8);
        rows::value_rows(
            &self.inner,
            |id| self.uid(id),
            |uid, customer, unit, start, group| {
                added_members(added, (uid, customer, unit, start, group))
            },
            |r| {
                rows::copy_value(&mut w, &r);
                Ok::<(), PyErr>(())
            },
        )?;
        Ok((w.rows(), PyBytes::new(py, &w.finish())))
    }

    /// The rollups of MAX, MIN, AVG and LATEST metrics, each merged into its
    /// row its own way, as thirteen columns: merge ("max", "min", "avg",
    /// "latest"), uid, customer, group, unit, period start, period end, value
    /// text (None for a STRING LATEST), value_text (a STRING LATEST's),
    /// value_sum (AVG's exact sum), events, latest_at (POSIX microseconds)
    /// and latest_id (LATEST's winner).
    fn kind_columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let cols: [Bound<'py, PyList>; 13] = std::array::from_fn(|_| PyList::empty(py));
        rows::kind_rows(
            &self.inner,
            |id| self.uid(id),
            |r| {
                cols[0].append(r.merge)?;
                cols[1].append(r.uid)?;
                cols[2].append(r.customer)?;
                cols[3].append(r.group)?;
                cols[4].append(r.unit)?;
                cols[5].append(r.start)?;
                cols[6].append(r.end)?;
                cols[7].append(r.value)?;
                cols[8].append(r.value_text)?;
                cols[9].append(r.value_sum)?;
                cols[10].append(r.events)?;
                cols[11].append(r.latest_at)?;
                cols[12].append(r.latest_id)
            },
        )?;
        PyTuple::new(py, cols)
    }

    /// `kind_columns` as one binary COPY payload for `tally_flush_kinds`:
    /// (rows, the merges present, bytes).
    fn kind_copy<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(usize, Vec<&'static str>, Bound<'py, PyBytes>)> {
        let mut w = CopyWriter::new(13);
        let mut merges: Vec<&'static str> = Vec::new();
        rows::kind_rows(
            &self.inner,
            |id| self.uid(id),
            |r| {
                if !merges.contains(&r.merge) {
                    merges.push(r.merge);
                }
                rows::copy_kind(&mut w, &r);
                Ok::<(), PyErr>(())
            },
        )?;
        Ok((w.rows(), merges, PyBytes::new(py, &w.finish())))
    }

    /// Every pending rollup, for tests: (uid, customer, group, unit, start) ->
    /// (period end, events, value): UNIQUE values as frozensets of members,
    /// AVG's as (rounded value, exact sum), LATEST's as (value, timestamp in
    /// POSIX microseconds, event id) with a STRING metric's value a str, the
    /// others as Decimals.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let decimal = py.import("decimal")?.getattr("Decimal")?;
        let out = PyDict::new(py);
        for table in self.inner.tables.iter().flatten() {
            let uid = self.uid(table.uid);
            let unit = UNITS[table.unit as usize];
            for ((customer, group, start), acc) in table.rows.iter() {
                let key = (
                    uid.as_str(),
                    self.inner.strings.text(customer),
                    self.inner.strings.text(group),
                    unit,
                    start,
                );
                let number = |text: Option<String>| decimal.call1((text.unwrap_or_default(),));
                let value: Bound<'py, PyAny> = match (acc.members(), acc.latest()) {
                    (Some(members), _) => {
                        let members: Vec<&str> = members
                            .iter()
                            .map(|&m| self.inner.strings.text(m))
                            .collect();
                        PyFrozenSet::new(py, &members)?.into_any()
                    }
                    (None, Some((micros, id, text))) => {
                        let value = match text {
                            Some(t) => self.inner.strings.text(t).into_pyobject(py)?.into_any(),
                            None => number(acc.value_text())?,
                        };
                        PyTuple::new(
                            py,
                            [
                                value,
                                micros.into_pyobject(py)?.into_any(),
                                id.into_pyobject(py)?.into_any(),
                            ],
                        )?
                        .into_any()
                    }
                    (None, None) => match acc.sum_text() {
                        Some(sum) => {
                            PyTuple::new(py, [number(acc.value_text())?, number(Some(sum))?])?
                                .into_any()
                        }
                        None => number(acc.value_text())?,
                    },
                };
                out.set_item(key, (table.ends[&start], acc.events(), value))?;
            }
        }
        Ok(out)
    }
}

fn added_members(
    added: &Bound<'_, PyDict>,
    key: (&str, &str, &'static str, i64, &str),
) -> PyResult<i64> {
    let found = added.get_item(key)?;
    found.map_or(Ok(0i64), |v| v.extract::<i64>())
}

/// The members a flush sends, as one binary COPY payload for
/// `tally_flush_members`: `rollups` is [((uid, customer, unit, start,
/// group), period end, [member, ...]), ...] (`MemberOffer.sent_by_rollup`),
/// each key once. Rows in key order, then by member, strings by their bytes.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn member_copy<'py>(
    py: Python<'py>,
    mut rollups: Vec<((String, String, String, i64, String), i64, Vec<String>)>,
) -> (usize, Bound<'py, PyBytes>) {
    // In key order, then member order, as the values (rows.rs): inserted
    // with no sort in PostgreSQL. Each rollup's key is unique in an offer.
    rollups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut w = CopyWriter::new(6);
    for ((uid, customer, unit, start, group), _end, members) in &mut rollups {
        members.sort_unstable();
        for member in members.iter() {
            rows::copy_member(&mut w, (uid, customer, unit, *start, group), member);
        }
    }
    (w.rows(), PyBytes::new(py, &w.finish()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add_class::<Batch>()?;
    m.add_class::<Deltas>()?;
    m.add_class::<Limits>()?;
    m.add_function(wrap_pyfunction!(parse_timestamp, m)?)?;
    m.add_function(wrap_pyfunction!(casefold, m)?)?;
    m.add_function(wrap_pyfunction!(member_copy, m)?)?;
    m.add("MAX_DEPTH", event::MAX_DEPTH)?;
    Ok(())
}
