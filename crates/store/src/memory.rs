//! [`ObjectStore`] in memory: the engine's unit tests run against it, and
//! it is the reference the conformance suite holds other stores to.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, RwLock};

use super::{
    directory_prefix, not_found, short_object, validate_name, ObjectStore, ObjectWriter,
};
use crate::error::Result;

type Objects = Arc<RwLock<BTreeMap<String, Arc<Vec<u8>>>>>;

#[derive(Default, Clone)]
pub struct MemoryStore {
    objects: Objects,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces one byte of a stored object, to simulate damage in tests.
    pub fn flip_byte(&self, name: &str, offset: usize) -> Result<()> {
        let mut objects = self.objects.write().expect("store lock");
        let object = objects
            .get_mut(name)
            .ok_or_else(|| not_found("memory:", name))?;
        let bytes = Arc::make_mut(object);
        if let Some(b) = bytes.get_mut(offset) {
            *b ^= 0xff;
        }
        Ok(())
    }

    fn object(&self, name: &str) -> Result<Arc<Vec<u8>>> {
        validate_name(name)?;
        self.objects
            .read()
            .expect("store lock")
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("memory:", name))
    }
}

impl ObjectStore for MemoryStore {
    fn location(&self) -> String {
        "memory:".into()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        validate_name(name)?;
        self.objects
            .write()
            .expect("store lock")
            .insert(name.to_string(), Arc::new(data.to_vec()));
        Ok(())
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemoryWriter {
            objects: self.objects.clone(),
            bytes: Vec::new(),
        }))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        Ok(self.object(name)?.as_ref().clone())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let object = self.object(name)?;
        let end = offset.saturating_add(buf.len() as u64);
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .filter(|(_, end)| *end <= object.len())
            .ok_or_else(|| short_object("memory:", name, end))?;
        buf.copy_from_slice(&object[range.0..range.1]);
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64> {
        Ok(self.object(name)?.len() as u64)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let prefix = directory_prefix(prefix);
        let objects = self.objects.read().expect("store lock");
        Ok(objects
            .keys()
            .filter(|name| name.starts_with(&prefix))
            .filter(|name| start_after.is_none_or(|after| name.as_str() > after))
            .take(limit)
            .cloned()
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        self.objects.write().expect("store lock").remove(name);
        Ok(())
    }
}

struct MemoryWriter {
    objects: Objects,
    bytes: Vec<u8>,
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemoryWriter {
    fn commit(self: Box<Self>, name: &str) -> Result<()> {
        validate_name(name)?;
        self.objects
            .write()
            .expect("store lock")
            .insert(name.to_string(), Arc::new(self.bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conforms() {
        super::super::conformance::check_all(&super::MemoryStore::new());
    }
}
