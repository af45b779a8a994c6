//! The encoders' output: RowBinary rows per table, with marks to undo a batch that failed half
//! way.

use super::super::tables::{Table, TABLES};

/// Rows encoded from one or more batches: per table (`Table::index`), its RowBinary bytes and
/// row count.
#[derive(Debug, Default)]
pub struct Encoded {
    pub data: [Vec<u8>; TABLES],
    pub rows: [usize; TABLES],
}

impl Encoded {
    pub fn clear(&mut self) {
        for d in &mut self.data {
            d.clear();
        }
        self.rows = [0; TABLES];
    }

    /// The rows of `t`.
    pub fn table(&self, t: Table) -> &[u8] {
        &self.data[t.index()]
    }

    /// Byte lengths of every table: where a batch's rows start (see [`Encoded::truncate`]).
    pub fn mark(&self) -> ([usize; TABLES], [usize; TABLES]) {
        (self.data.each_ref().map(Vec::len), self.rows)
    }

    /// Back to a [`Encoded::mark`]: drops what was appended after it.
    pub fn truncate(&mut self, (lens, rows): ([usize; TABLES], [usize; TABLES])) {
        for (d, n) in self.data.iter_mut().zip(lens) {
            d.truncate(n);
        }
        self.rows = rows;
    }

    /// Rows of the tables that are not payload tables (what an insert's row limit counts).
    pub fn primary_rows(&self) -> usize {
        Table::ALL
            .iter()
            .filter(|t| t.is_primary())
            .map(|t| self.rows[t.index()])
            .sum()
    }

    /// Runs `f` on `self`; when it fails, `self` is as it was before (a batch's rows go in
    /// whole or not at all).
    pub fn atomically<E>(&mut self, f: impl FnOnce(&mut Self) -> Result<(), E>) -> Result<(), E> {
        let mark = self.mark();
        let r = f(self);
        if r.is_err() {
            self.truncate(mark);
        }
        r
    }

    /// Bytes of every table.
    pub fn total_bytes(&self) -> usize {
        self.data.iter().map(Vec::len).sum()
    }
}

/// The tenant columns every row starts with (`OrgId`, `WorkspaceId`, `ProjectId`, `Region`), in
/// RowBinary, from the envelope (never from the client's data), replacing `out`.
pub(super) fn tenant_columns(batch: &tracegate_proto::v1::Batch, out: &mut Vec<u8>) {
    out.clear();
    for v in [
        &batch.org_id,
        &batch.workspace_id,
        &batch.project_id,
        &batch.region,
    ] {
        super::rowbinary::put_str(out, v.as_bytes());
    }
}
