/**
 * The x86 platform's few port I/O registers besides the UART: the ACPI
 * hardware-reduced sleep and reset registers the FADT points at, the i8042
 * reset line, and the CMOS/RTC index pair (absent: reads all ones).
 *
 * Like every device it never sees the hypervisor: it reports power-off and
 * reset through two callbacks and leaves ending the VM to its owner.
 *
 * @module
 */

import { isPowerOffWrite } from "../boot/acpi.ts";
import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
} from "../boot/layout.ts";

/** i8042 data port. */
export const I8042_DATA_PORT = 0x60;
/** i8042 status (read) and command (write) port. */
export const I8042_COMMAND_PORT = 0x64;
/** i8042 command "pulse the reset line" (what `reboot=k` sends). */
export const I8042_CMD_RESET = 0xfe;
/** i8042 status bit 0: a byte waits in the output buffer. */
export const I8042_STATUS_OUTPUT_FULL = 0x01;
/** CMOS/RTC index port. */
export const CMOS_INDEX_PORT = 0x70;
/** CMOS/RTC data port. */
export const CMOS_DATA_PORT = 0x71;
/** POST diagnostic port; Linux writes it as an I/O delay. */
export const POST_CODE_PORT = 0x80;

/** Events of the platform device; each defaults to doing nothing. */
export interface PlatformEvents {
  /** The guest wrote S5 to the ACPI sleep control register. */
  powerOff?(): void;
  /** The guest asked for a reset (ACPI reset register or i8042). */
  reset?(): void;
}

/**
 * The platform registers. The owner routes port accesses for which
 * {@link Platform.handles} is true to {@link Platform.read} and
 * {@link Platform.write}.
 *
 * @example
 * ```ts
 * import { Platform } from "./platform.ts";
 * let off = false;
 * const platform = new Platform({ powerOff: () => off = true });
 * platform.write(0x600, 0x34); // SLP_EN | S5 << 2
 * console.assert(off);
 * ```
 */
export class Platform {
  #events: PlatformEvents;

  /** Creates the device; `events` receive power-off and reset requests. */
  constructor(events: PlatformEvents = {}) {
    this.#events = events;
  }

  /** Whether `port` belongs to this device. */
  handles(port: number): boolean {
    switch (port) {
      case ACPI_SLEEP_CONTROL_PORT:
      case ACPI_SLEEP_STATUS_PORT:
      case ACPI_RESET_PORT:
      case I8042_DATA_PORT:
      case I8042_COMMAND_PORT:
      case CMOS_INDEX_PORT:
      case CMOS_DATA_PORT:
      case POST_CODE_PORT:
        return true;
      default:
        return false;
    }
  }

  /** Reads a register (the low byte of a wider access). */
  read(port: number): number {
    switch (port) {
      case ACPI_SLEEP_CONTROL_PORT:
      case ACPI_SLEEP_STATUS_PORT:
        return 0;
      // There is no keyboard controller, only its reset line. Status "output
      // buffer full, input buffer empty" makes both of Linux's uses quick:
      // the i8042 driver cannot flush the output buffer and gives up after 16
      // reads ("No controller found"), and `reboot=k` finds the input buffer
      // empty and sends the reset at once (all ones would make it poll 64K
      // times, each poll an exit, before every attempt).
      case I8042_COMMAND_PORT:
        return I8042_STATUS_OUTPUT_FULL;
      default:
        return 0xff;
    }
  }

  /** Writes a register (the low byte of a wider access). */
  write(port: number, value: number): void {
    switch (port) {
      case ACPI_SLEEP_CONTROL_PORT:
        if (isPowerOffWrite(value)) this.#events.powerOff?.();
        return;
      case ACPI_RESET_PORT:
        if (value === ACPI_RESET_VALUE) this.#events.reset?.();
        return;
      case I8042_COMMAND_PORT:
        if (value === I8042_CMD_RESET) this.#events.reset?.();
        return;
      default:
        return;
    }
  }
}
