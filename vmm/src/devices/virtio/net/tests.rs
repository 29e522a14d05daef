//! virtio-net device tests: virtio-queue's mock queues as the driver, anonymous guest memory
//! and a socketpair as the tap. The real-tap test (as root) is in `tap.rs`.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventSet, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use vm_memory::{Bytes, GuestAddress};

use super::test_utils::*;
use super::*;
use crate::devices::bus::lock;
use crate::devices::virtio::device::{VirtioDevice, VirtioInterruptType};

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const fn f(bit: u32) -> u64 {
    1 << bit
}

const BASIC: u64 = f(VIRTIO_F_VERSION_1) | f(VIRTIO_NET_F_MAC) | f(VIRTIO_NET_F_STATUS);
const MRG: u64 = BASIC | f(VIRTIO_NET_F_MRG_RXBUF);

fn read(rig: &Rig, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rig.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

fn num_buffers(rig: &Rig, addr: u64) -> u16 {
    let b = read(rig, addr + 10, 2);
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn features_follow_the_tap_and_acked_offloads_map_to_tunsetoffload() {
    let plain = offered_features(TapOffloads::default(), false);
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ] {
        assert_ne!(plain & f(bit), 0, "feature {bit}");
    }
    assert_ne!(plain & f(VIRTIO_F_VERSION_1), 0);
    for bit in [
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_GUEST_USO4,
        VIRTIO_NET_F_HOST_USO,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
    ] {
        assert_eq!(plain & f(bit), 0, "feature {bit}");
    }
    let all = offered_features(
        TapOffloads {
            ufo: true,
            uso: true,
        },
        true,
    );
    for bit in [
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_GUEST_USO4,
        VIRTIO_NET_F_GUEST_USO6,
        VIRTIO_NET_F_HOST_USO,
    ] {
        assert_ne!(all & f(bit), 0, "feature {bit}");
    }

    // What Linux+QEMU do: GUEST_* features become TUN_F_*, nothing without GUEST_CSUM.
    assert_eq!(tap_offload_flags(BASIC), 0);
    assert_eq!(tap_offload_flags(BASIC | f(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(
        tap_offload_flags(BASIC | f(VIRTIO_NET_F_GUEST_CSUM)),
        libc::TUN_F_CSUM
    );
    assert_eq!(tap_offload_flags(all), 0x7f & !0x08, "all but ECN");
    assert_eq!(
        tap_offload_flags(
            f(VIRTIO_NET_F_GUEST_CSUM)
                | f(VIRTIO_NET_F_GUEST_TSO4)
                | f(VIRTIO_NET_F_GUEST_TSO6)
                | f(VIRTIO_NET_F_HOST_TSO4)
                | f(VIRTIO_NET_F_CSUM)
        ),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
        "host-side features do not change what the tap hands us"
    );

    // Acked features are masked to the offer; activation applies them to the tap.
    let acked = f(VIRTIO_NET_F_GUEST_CSUM) | f(VIRTIO_NET_F_GUEST_TSO4) | f(VIRTIO_NET_F_GUEST_UFO);
    let (net, rig) = active_net(BASIC | acked);
    assert_eq!(
        net.acked_features() & f(VIRTIO_NET_F_GUEST_UFO),
        0,
        "not offered"
    );
    assert_eq!(
        lock(&rig.ctl).offloads,
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4]
    );
}

#[test]
fn config_space_has_mac_link_and_mtu() {
    let (mut net, rig) = rig(TapOffloads::default());
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert!(net.mac().is_unicast());
    assert_eq!(net.mac().0[0] & 0x02, 0x02, "locally administered");
    let mut config = [0xffu8; 16];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &net.mac().0);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1400);
    assert_eq!(&config[12..], &[0; 4], "beyond the config space reads 0");
    let mut far = [0xffu8; 4];
    net.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    drop(rig);
    let mac = "02:42:0a:58:00:05".parse().unwrap();
    let (tap, _peer) = fake_tap();
    net = Net::new(Box::new(tap), TapOffloads::default(), Some(mac), None).unwrap();
    assert_eq!(net.mac(), mac);
    assert_eq!(net.avail_features() & f(VIRTIO_NET_F_MTU), 0);
}

#[test]
fn rx_without_mergeable_buffers_puts_a_frame_in_one_chain() {
    let (mut net, rig) = active_net(BASIC);
    rig.rx
        .add_desc_chains(
            &[
                desc(BUF, 12, WRITE | NEXT, 1),
                desc(BUF + 0x1000, 2000, WRITE, 0),
            ],
            0,
        )
        .unwrap();
    let sent = frame(1500, 7);
    rig.peer.send(&sent);
    net.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 1512)]);
    let mut got = read(&rig, BUF, 12);
    got.extend(read(&rig, BUF + 0x1000, 1500));
    assert_eq!(got[12..], sent[12..]);
    assert_eq!(num_buffers(&rig, BUF), 1);
    assert_eq!(rig.irq.queue_count(), 1);
    assert_eq!(net.metrics().rx_frames.get(), 1);
    assert_eq!(net.metrics().rx_bytes.get(), 1512);
}

#[test]
fn rx_chain_too_short_without_mergeable_drops_the_frame_and_returns_the_chain() {
    let (mut net, rig) = active_net(BASIC);
    rig.rx
        .add_desc_chains(
            &[desc(BUF, 100, WRITE, 0), desc(BUF + 0x1000, 4000, WRITE, 0)],
            0,
        )
        .unwrap();
    rig.peer.send(&frame(200, 1));
    rig.peer.send(&frame(300, 2));
    net.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 0), (1, 312)]);
    assert_eq!(net.metrics().rx_dropped.get(), 1);
    assert_eq!(net.metrics().rx_frames.get(), 1);
    assert_eq!(read(&rig, BUF + 0x1000 + 12, 300), frame(300, 2)[12..]);
}

#[test]
fn rx_with_mergeable_buffers_spreads_a_big_frame_over_chains() {
    let (mut net, rig) = active_net(MRG);
    let chains: Vec<_> = (0..4)
        .map(|i| desc(BUF + i * 0x1000, 1000, WRITE, 0))
        .collect();
    rig.rx.add_desc_chains(&chains, 0).unwrap();
    let sent = frame(2488, 3); // 2500 bytes with the header
    rig.peer.send(&sent);
    net.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 1000), (1, 1000), (2, 500)]);
    assert_eq!(num_buffers(&rig, BUF), 3);
    let mut got = read(&rig, BUF, 1000);
    got.extend(read(&rig, BUF + 0x1000, 1000));
    got.extend(read(&rig, BUF + 0x2000, 500));
    assert_eq!(got[12..], sent[12..]);
    assert_eq!(rig.irq.queue_count(), 1, "one interrupt for the frame");

    // A 64 KiB GSO frame over 1000-byte buffers: 66 of them, one used-index update.
    let chains: Vec<_> = (0..70u64)
        .map(|i| desc(BUF + 0x10000 + i * 1000, 1000, WRITE, 0))
        .collect();
    rig.rx.add_desc_chains(&chains, 4).unwrap();
    let big = frame(MAX_FRAME_LEN, 9);
    rig.peer.send(&big);
    net.process_rx();
    let u = used(&rig.rx);
    assert_eq!(u.len(), 3 + 66, "chain 3 then 65 new ones");
    assert_eq!(num_buffers(&rig, BUF + 0x3000), 66);
    assert_eq!(
        u[3..].iter().map(|e| e.1 as usize).sum::<usize>(),
        big.len()
    );
}

#[test]
fn mergeable_frame_waits_for_enough_buffers() {
    let (mut net, rig) = active_net(MRG);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1000, WRITE, 0)], 0)
        .unwrap();
    rig.peer.send(&frame(1500, 0));
    net.process_rx();
    assert!(
        used(&rig.rx).is_empty(),
        "one buffer is not enough, none used"
    );
    assert!(!net.wanted_tap_events().contains(EventSet::IN));
    rig.rx
        .add_desc_chains(&[desc(BUF + 0x1000, 1000, WRITE, 0)], 1)
        .unwrap();
    net.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 1000), (1, 512)]);
    assert!(net.wanted_tap_events().contains(EventSet::IN));
}

#[test]
fn no_rx_buffers_stops_reading_the_tap_until_the_guest_kicks() {
    let (net, rig) = rig(TapOffloads::default());
    let net = Arc::new(Mutex::new(net));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(net.clone());
    let rx = activated_queue(&rig.rx);
    let rx_notify = rx.notify.clone();
    lock(&net).set_acked_features(BASIC);
    lock(&net)
        .activate(
            rig.mem.clone(),
            rig.irq.clone(),
            vec![rx, activated_queue(&rig.tx)],
        )
        .unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "activation");

    rig.peer.send(&frame(100, 1));
    rig.peer.send(&frame(100, 2));
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "tap readable");
    assert_eq!(lock(&net).metrics().rx_no_buffers.get(), 1);
    assert!(lock(&net).rx.pending.is_some());
    // The tap still has a frame, but it is not watched: the loop sleeps.
    let reads = lock(&rig.ctl).reads;
    for _ in 0..3 {
        assert_eq!(manager.run_with_timeout(20).unwrap(), 0, "no busy loop");
    }
    assert_eq!(lock(&rig.ctl).reads, reads);

    // The guest posts buffers and kicks: the pending frame, then the next one.
    rig.rx
        .add_desc_chains(
            &[
                desc(BUF, 2000, WRITE, 0),
                desc(BUF + 0x1000, 2000, WRITE, 0),
            ],
            0,
        )
        .unwrap();
    rx_notify.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(used(&rig.rx), vec![(0, 112), (1, 112)]);
    assert_eq!(read(&rig, BUF + 12, 100), frame(100, 1)[12..]);
    assert_eq!(read(&rig, BUF + 0x1000 + 12, 100), frame(100, 2)[12..]);
    assert!(lock(&net).tap_events.is_some(), "tap watched again");
    assert_eq!(lock(&net).metrics().event_fails.get(), 0);
}

#[test]
fn tx_sends_a_frame_gathered_from_its_descriptors() {
    let (mut net, rig) = active_net(BASIC);
    let sent = frame(1000, 5);
    rig.mem.write_slice(&sent[..12], GuestAddress(BUF)).unwrap();
    rig.mem
        .write_slice(&sent[12..], GuestAddress(BUF + 0x1000))
        .unwrap();
    rig.tx
        .add_desc_chains(&[desc(BUF, 12, NEXT, 1), desc(BUF + 0x1000, 1000, 0, 0)], 0)
        .unwrap();
    net.process_tx();
    assert_eq!(rig.peer.recv().unwrap(), sent);
    assert_eq!(used(&rig.tx), vec![(0, 0)]);
    assert_eq!(rig.irq.queue_count(), 1);
    assert_eq!(net.metrics().tx_frames.get(), 1);
    assert_eq!(net.metrics().tx_bytes.get(), 1012);
}

#[test]
fn malformed_tx_chains_are_returned_counted_and_not_sent() {
    let (mut net, rig) = active_net(BASIC);
    let end = TEST_MEM_SIZE as u64;
    rig.tx
        .add_desc_chains(
            &[
                // 0: write-only descriptor on the transmit queue.
                desc(BUF, 100, WRITE, 0),
                // 1: a header and nothing else.
                desc(BUF, 12, 0, 0),
                // 2: empty.
                desc(BUF, 0, 0, 0),
                // 3: past the end of guest memory.
                desc(end - 10, 100, 0, 0),
            ],
            0,
        )
        .unwrap();
    // 4: a loop.
    rig.tx
        .add_desc_chains(&[desc(BUF, 100, NEXT, 4)], 4)
        .unwrap();
    rig.tx
        .add_desc_chains(
            &[
                // 5-6: longer than any frame.
                desc(BUF, 60_000, NEXT, 6),
                desc(BUF, 60_000, 0, 0),
                // 7: a good one after all that.
                desc(BUF, 60, 0, 0),
            ],
            5,
        )
        .unwrap();
    net.process_tx();
    assert_eq!(
        used(&rig.tx),
        vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (7, 0)]
    );
    assert_eq!(rig.peer.recv().map(|f| f.len()), Some(60));
    assert!(rig.peer.recv().is_none());
    assert_eq!(net.metrics().malformed_chains.get(), 6);
    assert_eq!(net.metrics().tx_dropped.get(), 6);
    assert_eq!(net.metrics().tx_frames.get(), 1);
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_the_frame_goes_on() {
    let (mut net, rig) = active_net(MRG);
    let end = TEST_MEM_SIZE as u64;
    rig.rx
        .add_desc_chains(&[desc(BUF, 100, 0, 0), desc(end - 10, 100, WRITE, 0)], 0)
        .unwrap();
    rig.rx
        .add_desc_chains(&[desc(BUF, 100, WRITE | NEXT, 2)], 2)
        .unwrap();
    rig.rx
        .add_desc_chains(&[desc(BUF + 0x1000, 2000, WRITE, 0)], 3)
        .unwrap();
    rig.peer.send(&frame(50, 4));
    net.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 0), (1, 0), (2, 0), (3, 62)]);
    assert_eq!(net.metrics().malformed_chains.get(), 3);
    assert_eq!(net.metrics().rx_frames.get(), 1);
    assert_eq!(read(&rig, BUF, 100), vec![0; 100], "bad chains untouched");
}

#[test]
fn corrupted_avail_index_is_counted_not_served() {
    let (mut net, rig) = active_net(MRG);
    rig.rx
        .add_desc_chains(&[desc(BUF, 2000, WRITE, 0)], 0)
        .unwrap();
    rig.rx.avail().idx().store(NET_QUEUE_SIZE + 5);
    rig.tx.add_desc_chains(&[desc(BUF, 100, 0, 0)], 0).unwrap();
    rig.tx.avail().idx().store(NET_QUEUE_SIZE + 9);
    rig.peer.send(&frame(50, 0));
    net.process_rx();
    net.process_tx();
    assert!(used(&rig.rx).is_empty() && used(&rig.tx).is_empty());
    assert_eq!(net.metrics().queue_errors.get(), 2);
    assert!(net.rx.pending.is_some(), "the frame waits for a sane ring");
    assert!(!net.wanted_tap_events().contains(EventSet::IN));
}

#[test]
fn tx_eagain_keeps_the_chain_until_the_tap_is_writable() {
    let (mut net, rig) = active_net(BASIC);
    lock(&rig.ctl).write_errors.push_back(libc::EAGAIN);
    rig.tx
        .add_desc_chains(&[desc(BUF, 80, 0, 0), desc(BUF, 90, 0, 0)], 0)
        .unwrap();
    net.process_tx();
    assert!(used(&rig.tx).is_empty());
    assert!(net.wanted_tap_events().contains(EventSet::OUT));
    assert_eq!(net.metrics().tx_eagain.get(), 1);
    // EPOLLOUT (or the next kick): both go, in order.
    net.process_tx();
    assert_eq!(used(&rig.tx), vec![(0, 0), (1, 0)]);
    assert_eq!(rig.peer.recv().map(|f| f.len()), Some(80));
    assert_eq!(rig.peer.recv().map(|f| f.len()), Some(90));
    assert!(!net.wanted_tap_events().contains(EventSet::OUT));
}

#[test]
fn tap_refusing_a_frame_drops_only_that_frame() {
    let (mut net, rig) = active_net(BASIC);
    lock(&rig.ctl).write_errors.push_back(libc::EINVAL);
    rig.tx
        .add_desc_chains(&[desc(BUF, 80, 0, 0), desc(BUF, 90, 0, 0)], 0)
        .unwrap();
    net.process_tx();
    assert_eq!(used(&rig.tx), vec![(0, 0), (1, 0)]);
    assert_eq!(rig.peer.recv().map(|f| f.len()), Some(90));
    assert_eq!(net.metrics().tx_dropped.get(), 1);
    assert!(!net.tap_gone);
}

#[test]
fn a_tap_that_is_gone_is_dropped_once_and_does_not_spin() {
    let (net, rig) = rig(TapOffloads::default());
    let net = Arc::new(Mutex::new(net));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(net.clone());
    let tx = activated_queue(&rig.tx);
    let tx_notify = tx.notify.clone();
    lock(&net)
        .activate(
            rig.mem.clone(),
            rig.irq.clone(),
            vec![activated_queue(&rig.rx), tx],
        )
        .unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);

    // The interface is deleted: reads fail with EBADFD while the fd stays readable.
    lock(&rig.ctl).read_error = Some(libc::EBADFD);
    let reads = lock(&rig.ctl).reads;
    rig.peer.send(&frame(60, 0));
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    for _ in 0..3 {
        assert_eq!(manager.run_with_timeout(20).unwrap(), 0, "no busy loop");
    }
    assert_eq!(
        lock(&rig.ctl).reads,
        reads + 1,
        "one failed read, no retries"
    );
    let metrics = lock(&net).metrics();
    assert_eq!(metrics.tap_errors.get(), 1);
    assert_eq!(
        lock(&rig.irq.raised).as_slice(),
        &[VirtioInterruptType::Config],
        "link down announced"
    );
    let mut status = [0xffu8; 2];
    lock(&net).read_config(6, &mut status);
    assert_eq!(status, [0, 0]);

    // Transmit chains are returned, not stuck.
    rig.tx
        .add_desc_chains(&[desc(BUF, 80, 0, 0), desc(BUF, 90, 0, 0)], 0)
        .unwrap();
    tx_notify.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(used(&rig.tx), vec![(0, 0), (1, 0)]);
    assert_eq!(metrics.tx_dropped.get(), 2);
    assert!(rig.peer.recv().is_none());
}

#[test]
fn a_write_error_that_means_the_tap_is_gone_drops_the_rest() {
    let (mut net, rig) = active_net(BASIC);
    lock(&rig.ctl).write_errors.push_back(libc::EIO);
    rig.tx
        .add_desc_chains(&[desc(BUF, 80, 0, 0), desc(BUF, 90, 0, 0)], 0)
        .unwrap();
    net.process_tx();
    assert_eq!(used(&rig.tx), vec![(0, 0), (1, 0)]);
    assert!(net.tap_gone);
    assert!(
        rig.peer.recv().is_none(),
        "nothing written after the failure"
    );
    assert!(net.wanted_tap_events().is_empty());
}

#[test]
fn reset_drops_the_pending_frame_and_stops_watching() {
    let (net, rig) = rig(TapOffloads::default());
    let net = Arc::new(Mutex::new(net));
    let mut manager = Manager::new().unwrap();
    manager.add_subscriber(net.clone());
    lock(&net)
        .activate(
            rig.mem.clone(),
            rig.irq.clone(),
            vec![activated_queue(&rig.rx), activated_queue(&rig.tx)],
        )
        .unwrap();
    manager.run_with_timeout(100).unwrap();
    rig.peer.send(&frame(60, 0));
    manager.run_with_timeout(100).unwrap();
    assert!(lock(&net).rx.pending.is_some());
    assert!(lock(&net).reset());
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "reset event");
    assert_eq!(lock(&net).metrics().rx_dropped.get(), 1);
    assert!(lock(&net).tap_events.is_none());
    assert!(lock(&net).registered.is_empty());
    rig.peer.send(&frame(60, 1));
    assert_eq!(manager.run_with_timeout(20).unwrap(), 0);
    assert_eq!(lock(&net).metrics().event_fails.get(), 0);
}

#[test]
fn activation_needs_two_ready_queues() {
    let (mut net, rig) = rig(TapOffloads::default());
    let err = net
        .activate(
            rig.mem.clone(),
            rig.irq.clone(),
            vec![activated_queue(&rig.rx)],
        )
        .unwrap_err();
    assert!(err.to_string().contains("2"), "{err}");
    let mut unready = activated_queue(&rig.tx);
    virtio_queue::QueueT::set_ready(&mut unready.queue, false);
    assert!(net
        .activate(
            rig.mem.clone(),
            rig.irq.clone(),
            vec![activated_queue(&rig.rx), unready]
        )
        .is_err());
    assert!(!net.is_activated());
    assert_eq!(net.metrics().activate_fails.get(), 2);
}
