//! The per-store resource limiter: a memory cap that remembers it was hit, so a failed
//! allocation is reported as "memory limit" rather than as an anonymous trap.

use casty_core::limits::INSTANCE_TABLE_ELEMENTS_MAX;

#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) memory_max_bytes: usize,
    pub(crate) memory_limit_hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_max_bytes {
            self.memory_limit_hit = true;
            // Failing the call outright, rather than letting `memory.grow` return -1,
            // stops the guest at once instead of leaving it to abort in its allocator.
            wasmtime::bail!(
                "the instance asked for {desired} bytes of memory; its limit is {} bytes",
                self.memory_max_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= INSTANCE_TABLE_ELEMENTS_MAX)
    }
}
