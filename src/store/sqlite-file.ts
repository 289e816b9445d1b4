import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

/**
 * Opens the SQLite file at `path` (or ':memory:'), creating it if missing with mode 0600 in a 0700 directory: SQLite
 * would create it with the umask's mode, and it gives the -wal and -shm files the database file's mode. Then hands
 * the connection to `use`, and closes it again if `use` throws.
 */
export function openSqliteFile<T>(path: string, use: (db: Database.Database) => T): T {
  if (path !== ':memory:') {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    closeSync(openSync(path, 'a', 0o600));
  }
  const db = new Database(path, { timeout: 5000 });
  try {
    return use(db);
  } catch (error) {
    db.close();
    throw error;
  }
}
