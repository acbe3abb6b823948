//! The frame codec enforces its maximum on read (before buffering the payload) and on write.

use std::io::ErrorKind;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use wire::{frame_codec, frame_codec_with_max, FRAME_BYTES_MAX_DEFAULT};

#[tokio::test]
async fn oversized_frame_is_rejected_on_read_without_buffering_it() {
    let (mut raw, io) = tokio::io::duplex(1024);
    let mut framed = Framed::new(io, frame_codec());
    // Announce a frame one byte over the maximum, and send only a few payload bytes: the
    // reader must fail from the header alone, not wait for (and buffer) 4 MiB.
    let announced = FRAME_BYTES_MAX_DEFAULT as u32 + 1;
    raw.write_all(&announced.to_be_bytes()).await.unwrap();
    raw.write_all(b"abc").await.unwrap();
    let err = framed
        .next()
        .await
        .expect("an item")
        .expect_err("frame too big");
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("frame size too big"), "{err}");
    assert!(
        framed.read_buffer().capacity() < 64 * 1024,
        "payload was not reserved"
    );

    // A hostile maximal length is refused the same way.
    let (mut raw, io) = tokio::io::duplex(1024);
    let mut framed = Framed::new(io, frame_codec());
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(framed.next().await.expect("an item").is_err());
}

#[tokio::test]
async fn configured_maximum_is_exact() {
    let max = 2048;
    let (a, b) = tokio::io::duplex(16 * 1024);
    let mut sender = Framed::new(a, frame_codec_with_max(16 * 1024).unwrap());
    let mut receiver = Framed::new(b, frame_codec_with_max(max).unwrap());

    sender.send(Bytes::from(vec![7u8; max])).await.unwrap();
    let frame = receiver.next().await.unwrap().unwrap();
    assert_eq!(frame.len(), max);

    sender.send(Bytes::from(vec![7u8; max + 1])).await.unwrap();
    let err = receiver.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
}

#[tokio::test]
async fn oversized_frame_is_rejected_on_write() {
    let (a, _b) = tokio::io::duplex(1024);
    let mut sender = Framed::new(a, frame_codec_with_max(1024).unwrap());
    let err = sender.send(Bytes::from(vec![0u8; 1025])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn header_is_a_big_endian_u32_of_the_payload_length() {
    let (a, mut b) = tokio::io::duplex(1024);
    let mut sender = Framed::new(a, frame_codec());
    sender.send(Bytes::from_static(b"hello")).await.unwrap();
    let mut buf = [0u8; 9];
    tokio::io::AsyncReadExt::read_exact(&mut b, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf, b"\x00\x00\x00\x05hello");
}
