import { readdirSync, readFileSync } from 'node:fs';

/** utime + stime of a process, in microseconds (/proc/PID/stat fields 14 and 15, in clock ticks of 10 ms). */
function cpuMicros(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return 0;
  }
}

/** CPU of a process and its children (a server's cluster workers), µs. */
export function treeCpuMicros(pid: number): number {
  let children: number[] = [];
  try {
    children = readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
        .split(' ')
        .filter((s) => s.trim() !== '')
        .map(Number),
    );
  } catch {
    children = [];
  }
  return cpuMicros(pid) + children.reduce((sum, child) => sum + treeCpuMicros(child), 0);
}
