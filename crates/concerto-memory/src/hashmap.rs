//! The hashmap part of [`InMemoryStore`]: entries, the memory limit, change events and
//! persistence.
//!
//! Locking: each hashmap has an entry lock (held only for in-memory work, never across I/O
//! or listener calls) and a save lock (held for the whole of a load or save, so saves of one
//! hashmap never interleave and each writes a snapshot taken after the previous one's).
//! The save lock is always taken before the entry lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use concerto_vm::host::HostError;
use concerto_vm::{Str, Value};
use hashlink::LinkedHashMap;
use hashlink::linked_hash_map::Entry;
use parking_lot::Mutex;
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::codec::{self, shorten};
use crate::events::{self, ChangeListener, HashMapChange};
use crate::size::entry_size;
use crate::{InMemoryStore, persist};

/// A stored value and its size estimate as measured when it was written.
pub(crate) struct Stored {
    value: Value,
    size: usize,
}

/// A hashmap's entries, in insertion order (a deleted and re-inserted key moves to the end).
type Entries = LinkedHashMap<Str, Stored, FxBuildHasher>;

/// The in-memory state of one hashmap.
#[derive(Default)]
struct MapState {
    entries: Entries,
    /// Σ entry sizes.
    bytes: usize,
    /// Bumped by every change (and by a load).
    version: u64,
}

/// The file binding of one hashmap.
#[derive(Default)]
struct SaveState {
    path: Option<PathBuf>,
    /// The version whose snapshot the file holds.
    saved_version: Option<u64>,
}

/// When a persisted hashmap is written to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PersistMode {
    /// Only when the host calls [`InMemoryStore::save`] or [`InMemoryStore::save_all`].
    #[default]
    OnDemand,
    /// After every change, before the write returns (a failed save fails the write, though
    /// the change stays in memory). Also on demand.
    OnChange,
}

/// One hashmap.
pub(crate) struct Slot {
    index: u32,
    /// `store`, or `#3` without names.
    name: String,
    /// `hashmap 'store'`, or `hashmap #3`.
    label: String,
    state: Mutex<MapState>,
    save: Mutex<SaveState>,
    save_on_change: AtomicBool,
}

impl Slot {
    pub(crate) fn new(index: u32, name: Option<String>) -> Slot {
        let (name, label) = match name {
            Some(name) if !name.is_empty() => {
                let label = format!("hashmap '{name}'");
                (name, label)
            }
            _ => (format!("#{index}"), format!("hashmap #{index}")),
        };
        Slot {
            index,
            name,
            label,
            state: Mutex::new(MapState::default()),
            save: Mutex::new(SaveState::default()),
            save_on_change: AtomicBool::new(false),
        }
    }

    /// The hashmap's name (`#<index>` without names).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn change(&self, key: Str, old: Option<Value>, new: Option<Value>) -> HashMapChange {
        HashMapChange {
            map: self.index,
            name: self.name.clone(),
            key,
            old,
            new,
        }
    }
}

impl InMemoryStore {
    pub(crate) fn slot(&self, map: u32) -> Result<&Slot, HostError> {
        self.hashmaps.get(map as usize).ok_or_else(|| {
            HostError::failed(format!(
                "hashmap #{map} does not exist in this store (it holds {} hashmaps)",
                self.hashmaps.len()
            ))
        })
    }

    /// Moves the store's total by `added - removed`; refused (with the total at that
    /// moment) when it would exceed the limit. Called under the hashmap's entry lock, so the
    /// hashmap's own share cannot change meanwhile.
    #[inline]
    fn reserve(&self, added: usize, removed: usize) -> Result<(), usize> {
        // Without a limit the total is not kept (one atomic read-modify-write less per
        // write); `bytes_used` then sums the hashmaps' own counts.
        let Some(max) = self.max_bytes() else {
            return Ok(());
        };
        let update = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                let new = cur.saturating_add(added).saturating_sub(removed);
                (added <= removed || new <= max).then_some(new)
            });
        update.map(|_| ())
    }

    /// The sum of every hashmap's own byte count.
    pub(crate) fn held_bytes(&self) -> usize {
        self.hashmaps.iter().fold(0usize, |sum, slot| {
            sum.saturating_add(slot.state.lock().bytes)
        })
    }

    #[cold]
    fn set_limit_error(
        &self,
        slot: &Slot,
        key: &str,
        cur: usize,
        size: usize,
        old_size: usize,
    ) -> HostError {
        let would_be = cur.saturating_add(size).saturating_sub(old_size);
        let what = format!("setting key '{}'", shorten(key));
        self.limit_error(slot, &what, would_be)
    }

    fn limit_error(&self, slot: &Slot, what: &str, would_be: usize) -> HostError {
        HostError::limit(format!(
            "{}: {what} would bring the memory held by hashmaps to {would_be} bytes, above the \
             limit of {} bytes; nothing was written. Raise the limit with \
             Limits::max_hashmap_bytes (--max-hashmap-bytes on the command line)",
            slot.label,
            self.max_bytes().unwrap_or(usize::MAX)
        ))
    }

    fn notify(&self) -> bool {
        self.has_listeners.load(Ordering::Acquire)
    }

    /// Saves (in on-change mode) and tells the listeners, after the entry lock is released.
    #[inline]
    fn after_change(
        &self,
        slot: &Slot,
        version: u64,
        changes: Vec<HashMapChange>,
    ) -> Result<(), HostError> {
        // The common case (no file saved on change, nobody listening): nothing to do.
        if changes.is_empty() && !slot.save_on_change.load(Ordering::Acquire) {
            return Ok(());
        }
        self.save_and_tell(slot, version, changes)
    }

    fn save_and_tell(
        &self,
        slot: &Slot,
        version: u64,
        changes: Vec<HashMapChange>,
    ) -> Result<(), HostError> {
        let saved = if slot.save_on_change.load(Ordering::Acquire) {
            self.save_if_newer(slot, version)
        } else {
            Ok(())
        };
        if !changes.is_empty() {
            let listeners = self.listeners.read().clone();
            events::dispatch(&listeners, &changes);
        }
        saved.map_err(|e| {
            HostError::failed(format!(
                "{}: the change was made in memory but could not be saved: {e}",
                slot.label
            ))
        })
    }

    /// `set`: writes one entry; the previous value.
    pub(crate) fn write_one(
        &self,
        map: u32,
        key: Str,
        value: Value,
    ) -> Result<Option<Value>, HostError> {
        let slot = self.slot(map)?;
        let size = entry_size(&key, &value);
        let notify = self.notify();
        let event = notify.then(|| (key.clone(), value.clone()));
        let (old, version) = {
            let mut guard = slot.state.lock();
            let st = &mut *guard;
            // One hash lookup: the entry found (or its vacancy) is both checked against the
            // limit and written.
            let (old, old_size) = match st.entries.entry(key) {
                Entry::Occupied(mut existing) => {
                    let old_size = existing.get().size;
                    if let Err(cur) = self.reserve(size, old_size) {
                        let key = existing.key().clone();
                        return Err(self.set_limit_error(slot, &key, cur, size, old_size));
                    }
                    // Updating an existing key keeps its position.
                    let stored = Stored { value, size };
                    (
                        Some(std::mem::replace(existing.get_mut(), stored).value),
                        old_size,
                    )
                }
                Entry::Vacant(vacant) => {
                    if let Err(cur) = self.reserve(size, 0) {
                        let key = vacant.key().clone();
                        return Err(self.set_limit_error(slot, &key, cur, size, 0));
                    }
                    vacant.insert(Stored { value, size });
                    (None, 0)
                }
            };
            st.bytes = st.bytes.saturating_add(size).saturating_sub(old_size);
            st.version += 1;
            (old, st.version)
        };
        let changes = match event {
            Some((key, new)) => vec![slot.change(key, old.clone(), Some(new))],
            // Nobody listening: the save check is all that is left.
            None if !slot.save_on_change.load(Ordering::Acquire) => return Ok(old),
            None => Vec::new(),
        };
        self.after_change(slot, version, changes)?;
        Ok(old)
    }

    /// `set_many`: writes every entry or none.
    pub(crate) fn write_many(&self, map: u32, batch: Vec<(Str, Value)>) -> Result<(), HostError> {
        let slot = self.slot(map)?;
        if batch.is_empty() {
            return Ok(());
        }
        let sizes: Vec<usize> = batch.iter().map(|(k, v)| entry_size(k, v)).collect();
        let notify = self.notify();
        let mut changes = Vec::new();
        let mut olds = Vec::with_capacity(batch.len());
        let version = {
            let mut st = slot.state.lock();
            // The size each entry replaces, following earlier entries of the same batch.
            let mut pending: FxHashMap<&str, usize> = FxHashMap::default();
            let mut old_sizes = Vec::with_capacity(batch.len());
            for ((key, _), size) in batch.iter().zip(&sizes) {
                let old = match pending.get(key.as_str()) {
                    Some(s) => *s,
                    None => st.entries.get(key.as_str()).map_or(0, |e| e.size),
                };
                old_sizes.push(old);
                pending.insert(key.as_str(), *size);
            }
            let added = sizes.iter().fold(0usize, |a, s| a.saturating_add(*s));
            let removed = old_sizes.iter().fold(0usize, |a, s| a.saturating_add(*s));
            if let Err(cur) = self.reserve(added, removed) {
                let max = self.max_bytes().unwrap_or(usize::MAX);
                // Name the key at which the running total first crosses the limit.
                let mut running = cur;
                let mut crossing = None;
                for (((key, _), size), old) in batch.iter().zip(&sizes).zip(&old_sizes) {
                    running = running.saturating_add(*size).saturating_sub(*old);
                    if running > max && crossing.is_none() {
                        crossing = Some(key);
                    }
                }
                let crossing = crossing.or(batch.last().map(|(k, _)| k));
                let what = format!(
                    "set_many of {} entries (the limit is crossed at key '{}')",
                    batch.len(),
                    crossing.map(|k| shorten(k)).unwrap_or_default()
                );
                return Err(self.limit_error(slot, &what, running));
            }
            drop(pending);
            for ((key, value), size) in batch.into_iter().zip(sizes) {
                let event = notify.then(|| (key.clone(), value.clone()));
                let stored = Stored { value, size };
                let old = match st.entries.get_mut(key.as_str()) {
                    Some(existing) => Some(std::mem::replace(existing, stored).value),
                    None => {
                        st.entries.insert(key, stored);
                        None
                    }
                };
                if let Some((key, new)) = event {
                    changes.push(slot.change(key, old.clone(), Some(new)));
                }
                olds.push(old);
            }
            st.bytes = st.bytes.saturating_add(added).saturating_sub(removed);
            st.version += 1;
            st.version
        };
        // Replaced values are dropped here, outside the lock.
        drop(olds);
        self.after_change(slot, version, changes)
    }

    /// `delete`: the removed value.
    pub(crate) fn remove_one(&self, map: u32, key: &str) -> Result<Option<Value>, HostError> {
        let slot = self.slot(map)?;
        let notify = self.notify();
        let (key, old, version) = {
            let mut st = slot.state.lock();
            let Some((key, stored)) = st.entries.remove_entry(key) else {
                return Ok(None);
            };
            let _ = self.reserve(0, stored.size);
            st.bytes = st.bytes.saturating_sub(stored.size);
            st.version += 1;
            (key, stored.value, st.version)
        };
        let changes = if notify {
            vec![slot.change(key, Some(old.clone()), None)]
        } else {
            Vec::new()
        };
        self.after_change(slot, version, changes)?;
        Ok(Some(old))
    }

    /// `clear`: one change per removed key.
    pub(crate) fn clear_all(&self, map: u32) -> Result<(), HostError> {
        let slot = self.slot(map)?;
        let notify = self.notify();
        let (taken, version) = {
            let mut st = slot.state.lock();
            if st.entries.is_empty() {
                return Ok(());
            }
            let taken = std::mem::take(&mut st.entries);
            let _ = self.reserve(0, st.bytes);
            st.bytes = 0;
            st.version += 1;
            (taken, st.version)
        };
        let changes = if notify {
            taken
                .into_iter()
                .map(|(key, stored)| slot.change(key, Some(stored.value), None))
                .collect()
        } else {
            drop(taken);
            Vec::new()
        };
        self.after_change(slot, version, changes)
    }

    pub(crate) fn read_one(&self, map: u32, key: &str) -> Result<Option<Value>, HostError> {
        let slot = self.slot(map)?;
        Ok(slot.state.lock().entries.get(key).map(|e| e.value.clone()))
    }

    pub(crate) fn read_many(
        &self,
        map: u32,
        keys: &[Str],
    ) -> Result<Vec<Option<Value>>, HostError> {
        let slot = self.slot(map)?;
        let st = slot.state.lock();
        Ok(keys
            .iter()
            .map(|k| st.entries.get(k.as_str()).map(|e| e.value.clone()))
            .collect())
    }

    pub(crate) fn contains(&self, map: u32, key: &str) -> Result<bool, HostError> {
        let slot = self.slot(map)?;
        Ok(slot.state.lock().entries.contains_key(key))
    }

    pub(crate) fn snapshot(&self, map: u32) -> Result<Vec<(Str, Value)>, HostError> {
        let slot = self.slot(map)?;
        Ok(snapshot_of(&slot.state.lock().entries))
    }

    /// The hashmap's change counter (`None` for a hashmap that does not exist).
    pub(crate) fn version(&self, map: u32) -> Option<u64> {
        self.slot(map).ok().map(|slot| slot.state.lock().version)
    }

    pub(crate) fn count(&self, map: u32) -> Result<usize, HostError> {
        let slot = self.slot(map)?;
        Ok(slot.state.lock().entries.len())
    }

    /// The estimated bytes held by one hashmap (see [`crate::size`]).
    pub fn hashmap_bytes(&self, map: u32) -> Result<usize, HostError> {
        let slot = self.slot(map)?;
        Ok(slot.state.lock().bytes)
    }

    /// Calls `listener` after every change of hashmap `map` (see [`HashMapChange`]).
    ///
    /// Listeners run on the writing thread after the hashmap's lock is released (so they may
    /// use the store, even write to it), in the order the writer made its changes; `set_many`
    /// reports one change per entry, `clear` one per removed key. Changes of different
    /// writers may interleave. A panicking listener is caught and ignored; the change stands
    /// and the other listeners still run. Loading a file reports nothing.
    pub fn on_change(&self, map: u32, listener: ChangeListener) -> Result<(), HostError> {
        self.slot(map)?;
        self.listeners.write().push((Some(map), listener));
        self.has_listeners.store(true, Ordering::Release);
        Ok(())
    }

    /// Calls `listener` after every change of any hashmap, as [`InMemoryStore::on_change`]
    /// describes.
    pub fn on_any_change(&self, listener: ChangeListener) {
        self.listeners.write().push((None, listener));
        self.has_listeners.store(true, Ordering::Release);
    }

    /// Binds hashmap `map` to the file `path`, saved on demand ([`PersistMode::OnDemand`]).
    /// See [`InMemoryStore::persist_with`].
    pub fn persist(&self, map: u32, path: impl Into<PathBuf>) -> Result<(), HostError> {
        self.persist_with(map, path, PersistMode::OnDemand)
    }

    /// Binds hashmap `map` to the file `path` and loads it now.
    ///
    /// - A missing file means no saved state: the hashmap keeps what it holds, and the file
    ///   is created by the first save.
    /// - An existing file replaces the hashmap's contents (no change events). A file that
    ///   cannot be read or is not a valid hashmap file (see [`crate::codec`]) is an error
    ///   naming the path, and nothing changes; so is a file whose contents would exceed the
    ///   memory limit.
    /// - Temporary files that interrupted saves left beside `path` are removed first; they
    ///   are never read. One file must be bound by one store at a time (a save in progress
    ///   in another process could otherwise fail).
    ///
    /// Binding again replaces the previous binding (and loads the new file).
    pub fn persist_with(
        &self,
        map: u32,
        path: impl Into<PathBuf>,
        mode: PersistMode,
    ) -> Result<(), HostError> {
        let slot = self.slot(map)?;
        let path = path.into();
        let mut save = slot.save.lock();
        persist::remove_temp_files(&path);
        let loaded =
            persist::load(&path).map_err(|e| HostError::failed(format!("{}: {e}", slot.label)))?;
        if let Some(entries) = loaded {
            let mut total = 0usize;
            let mut fresh = Entries::default();
            for (key, value) in entries {
                let size = entry_size(&key, &value);
                total = total.saturating_add(size);
                fresh.insert(key, Stored { value, size });
            }
            let previous = {
                let mut st = slot.state.lock();
                if let Err(cur) = self.reserve(total, st.bytes) {
                    let would_be = cur.saturating_add(total).saturating_sub(st.bytes);
                    let what = format!("loading {}", path.display());
                    return Err(self.limit_error(slot, &what, would_be));
                }
                let previous = std::mem::replace(&mut st.entries, fresh);
                st.bytes = total;
                st.version += 1;
                save.saved_version = Some(st.version);
                previous
            };
            drop(previous);
        } else {
            save.saved_version = None;
        }
        save.path = Some(path);
        slot.save_on_change
            .store(mode == PersistMode::OnChange, Ordering::Release);
        Ok(())
    }

    /// Writes hashmap `map` to its file now, atomically (see [`crate::InMemoryStore`]'s
    /// persistence notes). The entries are copied under the hashmap's lock and written
    /// outside it; saves of one hashmap are serialised, so a later save always writes a
    /// later snapshot. An error leaves the previous file intact.
    pub fn save(&self, map: u32) -> Result<(), HostError> {
        let slot = self.slot(map)?;
        let mut save = slot.save.lock();
        self.save_locked(slot, &mut save)
            .map_err(|e| HostError::failed(format!("{}: {e}", slot.label)))
    }

    /// Saves every hashmap bound to a file; the error lists each one that failed (the
    /// others are saved all the same).
    pub fn save_all(&self) -> Result<(), HostError> {
        let mut failures = Vec::new();
        for slot in &self.hashmaps {
            let mut save = slot.save.lock();
            if save.path.is_none() {
                continue;
            }
            if let Err(e) = self.save_locked(slot, &mut save) {
                failures.push(format!("{}: {e}", slot.label));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(HostError::failed(failures.join("; ")))
        }
    }

    /// The file hashmap `map` is bound to.
    pub fn persisted_path(&self, map: u32) -> Result<Option<PathBuf>, HostError> {
        let slot = self.slot(map)?;
        Ok(slot.save.lock().path.clone())
    }

    fn save_locked(&self, slot: &Slot, save: &mut SaveState) -> Result<(), String> {
        let Some(path) = save.path.clone() else {
            return Err(
                "is not bound to a file; call InMemoryStore::persist before saving".to_string(),
            );
        };
        let (snapshot, version) = {
            let st = slot.state.lock();
            (snapshot_of(&st.entries), st.version)
        };
        let json = codec::encode_entries(&snapshot)
            .map_err(|e| format!("cannot save to {}: {e}", path.display()))?;
        drop(snapshot);
        persist::write_atomic(&path, &json)?;
        save.saved_version = Some(version);
        Ok(())
    }

    /// The on-change save: skipped when a save since `version` already wrote it.
    fn save_if_newer(&self, slot: &Slot, version: u64) -> Result<(), String> {
        let mut save = slot.save.lock();
        if save.path.is_none() || save.saved_version.is_some_and(|v| v >= version) {
            return Ok(());
        }
        self.save_locked(slot, &mut save)
    }
}

fn snapshot_of(entries: &Entries) -> Vec<(Str, Value)> {
    entries
        .iter()
        .map(|(k, e)| (k.clone(), e.value.clone()))
        .collect()
}

/// One hashmap write of a batch ([`InMemoryStore::write_batch`]).
pub(crate) enum MapWrite {
    /// `set(key, value)`
    Set(Str, Value),
    /// `delete(key)`
    Delete(Str),
    /// `clear()`
    Clear,
}

impl InMemoryStore {
    /// Writes `batch` (hashmap, write), all or none: every hashmap it names is locked (in
    /// index order) and the whole batch is checked against the memory limit, following its
    /// own earlier writes, before anything is written. `also` runs after the check, while
    /// the locks are still held, and must not fail (the batch's ledger and memory writes).
    pub(crate) fn write_batch(
        &self,
        batch: Vec<(u32, MapWrite)>,
        also: impl FnOnce(),
    ) -> Result<(), HostError> {
        let mut maps: Vec<u32> = batch.iter().map(|(map, _)| *map).collect();
        maps.sort_unstable();
        maps.dedup();
        let slots = maps
            .iter()
            .map(|&map| self.slot(map))
            .collect::<Result<Vec<_>, _>>()?;
        let at = |map: u32| maps.binary_search(&map).unwrap_or_default();
        let mut states: Vec<_> = slots.iter().map(|slot| slot.state.lock()).collect();

        // The check: each key's size as the batch leaves it (`None`: absent).
        let mut overlay: Vec<FxHashMap<&str, Option<usize>>> =
            vec![FxHashMap::default(); maps.len()];
        let mut cleared = vec![false; maps.len()];
        let mut bytes: Vec<usize> = states.iter().map(|st| st.bytes).collect();
        let (mut added, mut removed) = (0usize, 0usize);
        for (map, write) in &batch {
            let i = at(*map);
            let current = |key: &str| match overlay[i].get(key) {
                Some(size) => *size,
                None if cleared[i] => None,
                None => states[i].entries.get(key).map(|e| e.size),
            };
            match write {
                MapWrite::Set(key, value) => {
                    let (size, old) = (entry_size(key, value), current(key).unwrap_or(0));
                    added = added.saturating_add(size);
                    removed = removed.saturating_add(old);
                    bytes[i] = bytes[i].saturating_add(size).saturating_sub(old);
                    overlay[i].insert(key.as_str(), Some(size));
                }
                MapWrite::Delete(key) => {
                    let old = current(key).unwrap_or(0);
                    removed = removed.saturating_add(old);
                    bytes[i] = bytes[i].saturating_sub(old);
                    overlay[i].insert(key.as_str(), None);
                }
                MapWrite::Clear => {
                    removed = removed.saturating_add(bytes[i]);
                    bytes[i] = 0;
                    overlay[i].clear();
                    cleared[i] = true;
                }
            }
        }
        drop(overlay);
        if let Err(cur) = self.reserve(added, removed) {
            let would_be = cur.saturating_add(added).saturating_sub(removed);
            let what = format!("a write batch of {} writes", batch.len());
            return Err(self.limit_error(slots[0], &what, would_be));
        }

        also();
        let notify = self.notify();
        let mut changes: Vec<Vec<HashMapChange>> = maps.iter().map(|_| Vec::new()).collect();
        let mut olds = Vec::new();
        for (map, write) in batch {
            let i = at(map);
            let (slot, st) = (slots[i], &mut *states[i]);
            match write {
                MapWrite::Set(key, value) => {
                    let size = entry_size(&key, &value);
                    let event = notify.then(|| (key.clone(), value.clone()));
                    let stored = Stored { value, size };
                    let old = match st.entries.get_mut(key.as_str()) {
                        Some(existing) => Some(std::mem::replace(existing, stored)),
                        None => {
                            st.entries.insert(key, stored);
                            None
                        }
                    };
                    let old_size = old.as_ref().map_or(0, |o| o.size);
                    st.bytes = st.bytes.saturating_add(size).saturating_sub(old_size);
                    let old = old.map(|o| o.value);
                    if let Some((key, new)) = event {
                        changes[i].push(slot.change(key, old.clone(), Some(new)));
                    }
                    olds.push(old);
                }
                MapWrite::Delete(key) => {
                    if let Some((key, stored)) = st.entries.remove_entry(key.as_str()) {
                        st.bytes = st.bytes.saturating_sub(stored.size);
                        if notify {
                            changes[i].push(slot.change(key, Some(stored.value), None));
                        }
                    }
                }
                MapWrite::Clear => {
                    let taken = std::mem::take(&mut st.entries);
                    st.bytes = 0;
                    if notify {
                        changes[i].extend(
                            taken
                                .into_iter()
                                .map(|(key, stored)| slot.change(key, Some(stored.value), None)),
                        );
                    }
                }
            }
        }
        let versions: Vec<u64> = states
            .iter_mut()
            .map(|st| {
                st.version += 1;
                st.version
            })
            .collect();
        drop(states);
        // Replaced values are dropped here, outside the locks.
        drop(olds);
        let mut saved = Ok(());
        for ((slot, version), changes) in slots.into_iter().zip(versions).zip(changes) {
            let result = self.after_change(slot, version, changes);
            if saved.is_ok() {
                saved = result;
            }
        }
        saved
    }
}
