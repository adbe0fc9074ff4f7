//! Arbitrary bytes from a client: frame them, parse every frame as a request,
//! and run any produce payload through batch validation. Nothing may panic,
//! hang or allocate without bound; errors are the expected outcome.
#![no_main]

use bytes::BytesMut;
use chronik_wire::batch;
use chronik_wire::framing::FrameDecoder;
use chronik_wire::protocol::{self, Parsed};
use libfuzzer_sys::fuzz_target;

// The broker's allocator, so the fuzzer checks what production runs.
#[global_allocator]
static ALLOC: chronik_wire::alloc::LazyLargeAlloc = chronik_wire::alloc::LazyLargeAlloc;

fuzz_target!(|data: &[u8]| {
    // Small limit so the fuzzer explores the oversized-frame path too.
    let decoder = FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        match protocol::parse(frame) {
            Ok(Parsed::Request(req)) => {
                if let kafka_protocol::messages::RequestKind::Produce(p) = req.body {
                    for t in p.topic_data {
                        for pd in t.partition_data {
                            if let Some(records) = pd.records {
                                if let Ok(h) = batch::validate_produce_batch(&records) {
                                    let stamped = batch::stamp(&records, 42, 1, None);
                                    assert_eq!(batch::validate_produce_batch(&stamped).map(|x| x.records_count), Ok(h.records_count));
                                }
                            }
                        }
                    }
                }
            }
            Ok(Parsed::ApiVersionsFallback { correlation_id }) => {
                assert!(!protocol::api_versions_fallback(correlation_id).is_empty());
            }
            Err(_) => break,
        }
    }
    // Batch validation on raw bytes, independent of request framing.
    let _ = batch::validate_produce_batch(data);
});
