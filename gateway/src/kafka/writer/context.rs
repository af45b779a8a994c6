//! The consumer's librdkafka context: logs, statistics, and rebalance events handed to the
//! driver (revoked partitions leave `owned` at once, inside `poll`).

use super::*;

pub(super) fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for WriterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.stats.log(level, fac, log_message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.stats.error(error, reason)
    }
    fn stats(&self, statistics: Statistics) {
        self.stats.stats(statistics)
    }
}

impl ConsumerContext for WriterContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let list = tps(tpl);
                {
                    let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                    for tp in &list {
                        owned.remove(tp);
                    }
                }
                self.push(Event::Revoke(list));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.push(Event::Assign(tps(tpl)));
        }
    }
}

impl WriterContext {
    pub(super) fn push(&self, e: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
    pub(super) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
