import { equal, ok, throws } from "node:assert/strict";
import { errnoName, libc, O_RDWR, OsError } from "./libc.ts";
import { explainOpenError, Kvm } from "../src/hv/kvm/system.ts";

Deno.test("open() of a missing file throws OsError ENOENT with the call's name", () => {
  throws(() => libc().open("/nonexistent/initx", O_RDWR), (err) => {
    ok(err instanceof OsError);
    equal(err.code, "ENOENT");
    equal(err.errno, 2);
    equal(
      err.message,
      "Cannot open /nonexistent/initx: no such file or directory (ENOENT)",
    );
    return true;
  });
});

Deno.test("ioctl() on a closed fd throws OsError EBADF", () => {
  try {
    libc().ioctl(987654, 0n, 0, "TEST_IOCTL");
    throw new Error("ioctl on a bad fd succeeded");
  } catch (err) {
    ok(err instanceof OsError);
    equal(err.code, "EBADF");
    ok(err.message.startsWith("Cannot ioctl TEST_IOCTL: "));
  }
});

Deno.test("errnoName() names known errnos and numbers unknown ones", () => {
  equal(errnoName(13), "EACCES");
  equal(errnoName(4242), "errno 4242");
});

Deno.test("Kvm.open() on a missing device says what to do", () => {
  throws(
    () => Kvm.open("/nonexistent/kvm"),
    /Cannot open \/nonexistent\/kvm: it does not exist; this host has no KVM/,
  );
});

Deno.test("explainOpenError() explains EACCES and ENODEV", () => {
  equal(
    explainOpenError(
      "/dev/kvm",
      new OsError("open /dev/kvm", 13, "Permission denied"),
    ).message,
    'Cannot open /dev/kvm: permission denied; add your user to the "kvm" group or run as root',
  );
  ok(
    explainOpenError(
      "/dev/kvm",
      new OsError("open /dev/kvm", 19, "No such device"),
    ).message.includes("load kvm_intel or kvm_amd"),
  );
});

Deno.test("eventfd(), write() and read() round-trip a counter", () => {
  const c = libc();
  const fd = c.eventfd(0, 0);
  try {
    const one = new Uint8Array(8);
    new DataView(one.buffer).setBigUint64(0, 5n, true);
    equal(c.write(fd, one), 8);
    const got = new Uint8Array(8);
    equal(c.read(fd, got), 8);
    equal(new DataView(got.buffer).getBigUint64(0, true), 5n);
    const revents = c.poll([{ fd, events: 1 }], 0);
    equal(revents[0], 0);
  } finally {
    c.close(fd);
  }
});
