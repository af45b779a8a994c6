//! Producing a Kafka message whose bytes librdkafka does not copy (issue 21, goal 2).
//!
//! `rdkafka`'s `BaseProducer::send` always passes `RD_KAFKA_MSG_F_COPY`, so librdkafka copies
//! every key and value into buffers of its own: 11 % of the gateway's CPU with 8 KiB prompts,
//! one of the three user-space copies between the socket and the broker (docs/benchmarks.md,
//! issue 21). Here they are handed over without the flag, and their buffers travel with the
//! message as its delivery opaque, so they live exactly as long as librdkafka may read them:
//! they are dropped in the delivery report, after which librdkafka never touches a payload it
//! does not own (without `F_FREE` it neither frees nor reads it). A message librdkafka refuses
//! at once is dropped here with its buffers. If the producer is destroyed with messages still
//! queued, their buffers leak rather than being freed under librdkafka.

use std::ffi::{c_void, CStr};

use bytes::Bytes;
use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tokio::sync::oneshot;

use super::stats::StatsContext;

/// A message's buffers and where its delivery report goes.
pub struct Owned {
    key: Vec<u8>,
    value: Bytes,
    report: oneshot::Sender<Result<(), KafkaError>>,
}

/// The delivery report of one message: `Err(RecvError)` if the producer went away without one.
pub type Delivery = oneshot::Receiver<Result<(), KafkaError>>;

impl ProducerContext for StatsContext {
    type DeliveryOpaque = Box<Owned>;

    fn delivery(&self, result: &DeliveryResult<'_>, owned: Box<Owned>) {
        let r = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        let Owned { report, key, value } = *owned;
        // The request's task may be gone (client disconnected): the report then has no reader.
        let _ = report.send(r);
        // librdkafka is done with the payload: the buffers go now.
        drop((key, value));
    }
}

/// Enqueues `key` / `value` on `topic` (partition chosen by librdkafka's partitioner from the
/// key) without copying them.
pub fn send(
    producer: &ThreadedProducer<StatsContext>,
    topic: &CStr,
    key: Vec<u8>,
    value: Bytes,
) -> Result<Delivery, KafkaError> {
    let (report, delivery) = oneshot::channel();
    // The heap buffers do not move when the Vec and the `Bytes` handle move into the box.
    let (kptr, klen) = (key.as_ptr() as *mut c_void, key.len());
    let (vptr, vlen) = (value.as_ptr() as *mut c_void, value.len());
    let opaque = Box::into_raw(Box::new(Owned { key, value, report }));
    // SAFETY: the variadic list is the one `rdkafka`'s `BaseProducer::send` passes (tag, value
    // pairs ended by RD_KAFKA_VTYPE_END), minus `F_COPY`: the key and value pointers stay valid
    // until the delivery report, because the box that owns them is the message's opaque and is
    // only freed in `delivery` (or just below, if librdkafka refuses the message at once).
    let err: RDKafkaRespErr = unsafe {
        use rdsys::rd_kafka_vtype_t::*;
        rdsys::rd_kafka_producev(
            producer.client().native_ptr(),
            RD_KAFKA_VTYPE_TOPIC,
            topic.as_ptr(),
            RD_KAFKA_VTYPE_PARTITION,
            -1i32, // RD_KAFKA_PARTITION_UA: the partitioner picks
            RD_KAFKA_VTYPE_MSGFLAGS,
            0 as std::ffi::c_int,
            RD_KAFKA_VTYPE_VALUE,
            vptr,
            vlen,
            RD_KAFKA_VTYPE_KEY,
            kptr,
            klen,
            RD_KAFKA_VTYPE_OPAQUE,
            opaque as *mut c_void,
            RD_KAFKA_VTYPE_END,
        )
    };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka did not take the message, so the box is still ours alone.
        drop(unsafe { Box::from_raw(opaque) });
        return Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(err)));
    }
    Ok(delivery)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    /// A producer with nowhere to deliver: a closed loopback port.
    fn producer(extra: &[(&str, &str)]) -> ThreadedProducer<StatsContext> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("message.timeout.ms", "300")
            .set("log_level", "0");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create_with_context(StatsContext::new("test")).unwrap()
    }

    #[tokio::test]
    async fn an_undeliverable_message_reports_its_error_and_gives_its_buffers_back() {
        let p = producer(&[]);
        let topic = c"t";
        let d = send(&p, topic, b"k".to_vec(), Bytes::from(vec![7; 100_000])).unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), d)
            .await
            .expect("a report within the message timeout")
            .expect("the report, not a dropped sender");
        let code = r.unwrap_err().rdkafka_error_code();
        assert_eq!(code, Some(RDKafkaErrorCode::MessageTimedOut));
        // librdkafka lowers its count just after the report (seen once in CI at 1): bounded wait.
        for _ in 0..100 {
            if p.in_flight_count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(p.in_flight_count(), 0, "librdkafka holds nothing more");
    }

    #[tokio::test]
    async fn a_message_refused_at_once_comes_back_as_an_error() {
        // Room for one message: the second is refused by librdkafka before it is queued, and
        // its buffers are freed here (a double free or a leak into librdkafka would crash or
        // show under the allocator's checks in debug builds).
        let p = producer(&[("queue.buffering.max.messages", "1")]);
        let first = send(&p, c"t", vec![], Bytes::from(vec![1; 10])).unwrap();
        let e = send(&p, c"t", vec![], Bytes::from(vec![2; 10])).unwrap_err();
        assert_eq!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull));
        // The queued one still gets its report.
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), first)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_err());
    }
}
