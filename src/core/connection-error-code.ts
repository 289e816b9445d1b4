/**
 * Why a custom key store could not be connected, in AWS KMS's ConnectionErrorCode names (DescribeCustomKeyStores):
 * the subset a PKCS#11 token can cause. The HSM layer classifies its failures into these; the core only reports them.
 */
export type ConnectionErrorCode =
  | 'INVALID_CREDENTIALS'
  | 'CLUSTER_NOT_FOUND'
  | 'NETWORK_ERRORS'
  | 'INTERNAL_ERROR'
  | 'USER_LOCKED_OUT'
  | 'USER_LOGGED_IN';
