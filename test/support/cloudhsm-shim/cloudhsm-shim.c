/*
 * cloudhsm-shim: a PKCS#11 v2.40 module for tests that forwards to SoftHSM and enforces the rules of AWS CloudHSM
 * (Client SDK 5) that hsm-kms must live with. No free module generates the AES-GCM IV itself, so this is how the
 * adapter's "module writes the IV into a zeroed pIv" path gets tested (issue 9 item 7; facts and sources in
 * shared/reference/hsm-portability.md §3, §4.5, §7 item 3).
 *
 * The CloudHSM documents each rule follows (AWS CloudHSM User Guide):
 *   [mechanisms]  "Supported mechanisms" (pkcs11-mechanisms): the GCM IV comes from the HSM and is written to pIv,
 *                 which must point to a zeroed buffer (footnote 1); the derive list has no *_ENCRYPT_DATA; the wrap
 *                 list has vendor mechanisms instead of CKM_AES_KEY_WRAP_PAD/_KWP.
 *   [known issues] "Known issues for the PKCS #11 library" (ki-pkcs11-sdk): C_Encrypt and C_Decrypt buffers cannot
 *                 exceed 16 KB with CKM_AES_GCM; read-only sessions are not supported (CKR_FUNCTION_FAILED).
 *   [attributes]  "Supported attributes" (pkcs11-attributes): CKA_MODIFIABLE "must be explicitly set only to the
 *                 default value".
 *   [wrapping]    "AES key wrapping" (manage-aes-key-wrapping): CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD is RFC 5649.
 *
 * Configuration, from the environment:
 *   HSM_KMS_SHIM_TARGET  the module to forward to (default /usr/lib/softhsm/libsofthsm2.so), dlopen'ed at the first
 *                        C_GetFunctionList, so it must be set before the shim is loaded.
 *   HSM_KMS_SHIM_HIDE    comma-separated mechanism numbers (0x1087 or 4231) the shim pretends not to have, to test
 *                        what the service does on a module that lacks them. Read at every C_Initialize, so a process
 *                        can C_Finalize, change it and C_Initialize again.
 *
 * Where CloudHSM's documents name no return code, the shim picks the obvious one and says so in a comment.
 * Thread safety: the only state is a mutex-protected list of the sessions with a GCM operation under way.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Minimal PKCS#11 v2.40 declarations (LP64 Linux: CK_ULONG is unsigned long, default alignment) ---- */

typedef unsigned char CK_BYTE;
typedef CK_BYTE CK_BBOOL;
typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_OBJECT_HANDLE;
typedef CK_ULONG CK_MECHANISM_TYPE;
typedef CK_ULONG CK_ATTRIBUTE_TYPE;
typedef CK_ULONG CK_USER_TYPE;

typedef struct CK_VERSION {
  CK_BYTE major;
  CK_BYTE minor;
} CK_VERSION;

typedef struct CK_INFO {
  CK_VERSION cryptokiVersion;
  CK_BYTE manufacturerID[32];
  CK_FLAGS flags;
  CK_BYTE libraryDescription[32];
  CK_VERSION libraryVersion;
} CK_INFO;

typedef struct CK_SESSION_INFO {
  CK_SLOT_ID slotID;
  CK_ULONG state;
  CK_FLAGS flags;
  CK_ULONG ulDeviceError;
} CK_SESSION_INFO;

typedef struct CK_MECHANISM {
  CK_MECHANISM_TYPE mechanism;
  void *pParameter;
  CK_ULONG ulParameterLen;
} CK_MECHANISM;

typedef struct CK_MECHANISM_INFO CK_MECHANISM_INFO; /* only passed through */

typedef struct CK_ATTRIBUTE {
  CK_ATTRIBUTE_TYPE type;
  void *pValue;
  CK_ULONG ulValueLen;
} CK_ATTRIBUTE;

typedef struct CK_GCM_PARAMS {
  CK_BYTE *pIv;
  CK_ULONG ulIvLen;
  CK_ULONG ulIvBits;
  CK_BYTE *pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
} CK_GCM_PARAMS;

typedef void (*CK_OTHER_FN)(void); /* a function the shim neither calls nor overrides: only its slot matters */

typedef struct CK_FUNCTION_LIST CK_FUNCTION_LIST;
typedef CK_RV (*CK_C_GetFunctionList)(CK_FUNCTION_LIST **ppFunctionList);

/* Every function of v2.40, in the standard order: the layout must match the caller's exactly. */
struct CK_FUNCTION_LIST {
  CK_VERSION version;
  CK_RV (*C_Initialize)(void *pInitArgs);
  CK_RV (*C_Finalize)(void *pReserved);
  CK_RV (*C_GetInfo)(CK_INFO *pInfo);
  CK_C_GetFunctionList C_GetFunctionList;
  CK_OTHER_FN C_GetSlotList;
  CK_OTHER_FN C_GetSlotInfo;
  CK_OTHER_FN C_GetTokenInfo;
  CK_RV (*C_GetMechanismList)(CK_SLOT_ID slotID, CK_MECHANISM_TYPE *pMechanismList, CK_ULONG *pulCount);
  CK_RV (*C_GetMechanismInfo)(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *pInfo);
  CK_OTHER_FN C_InitToken;
  CK_OTHER_FN C_InitPIN;
  CK_OTHER_FN C_SetPIN;
  CK_RV (*C_OpenSession)(CK_SLOT_ID slotID, CK_FLAGS flags, void *pApplication, void *Notify,
                         CK_SESSION_HANDLE *phSession);
  CK_RV (*C_CloseSession)(CK_SESSION_HANDLE hSession);
  CK_RV (*C_CloseAllSessions)(CK_SLOT_ID slotID);
  CK_RV (*C_GetSessionInfo)(CK_SESSION_HANDLE hSession, CK_SESSION_INFO *pInfo);
  CK_OTHER_FN C_GetOperationState;
  CK_OTHER_FN C_SetOperationState;
  CK_OTHER_FN C_Login;
  CK_OTHER_FN C_Logout;
  CK_RV (*C_CreateObject)(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE *pTemplate, CK_ULONG ulCount,
                          CK_OBJECT_HANDLE *phObject);
  CK_RV (*C_CopyObject)(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE *pTemplate,
                        CK_ULONG ulCount, CK_OBJECT_HANDLE *phNewObject);
  CK_OTHER_FN C_DestroyObject;
  CK_OTHER_FN C_GetObjectSize;
  CK_OTHER_FN C_GetAttributeValue;
  CK_RV (*C_SetAttributeValue)(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE *pTemplate,
                               CK_ULONG ulCount);
  CK_OTHER_FN C_FindObjectsInit;
  CK_OTHER_FN C_FindObjects;
  CK_OTHER_FN C_FindObjectsFinal;
  CK_RV (*C_EncryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey);
  CK_RV (*C_Encrypt)(CK_SESSION_HANDLE hSession, CK_BYTE *pData, CK_ULONG ulDataLen, CK_BYTE *pEncryptedData,
                     CK_ULONG *pulEncryptedDataLen);
  CK_RV (*C_EncryptUpdate)(CK_SESSION_HANDLE hSession, CK_BYTE *pPart, CK_ULONG ulPartLen, CK_BYTE *pEncryptedPart,
                           CK_ULONG *pulEncryptedPartLen);
  CK_RV (*C_EncryptFinal)(CK_SESSION_HANDLE hSession, CK_BYTE *pLastEncryptedPart, CK_ULONG *pulLastEncryptedPartLen);
  CK_RV (*C_DecryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey);
  CK_RV (*C_Decrypt)(CK_SESSION_HANDLE hSession, CK_BYTE *pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE *pData,
                     CK_ULONG *pulDataLen);
  CK_RV (*C_DecryptUpdate)(CK_SESSION_HANDLE hSession, CK_BYTE *pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                           CK_BYTE *pPart, CK_ULONG *pulPartLen);
  CK_RV (*C_DecryptFinal)(CK_SESSION_HANDLE hSession, CK_BYTE *pLastPart, CK_ULONG *pulLastPartLen);
  CK_OTHER_FN C_DigestInit;
  CK_OTHER_FN C_Digest;
  CK_OTHER_FN C_DigestUpdate;
  CK_OTHER_FN C_DigestKey;
  CK_OTHER_FN C_DigestFinal;
  CK_RV (*C_SignInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey);
  CK_OTHER_FN C_Sign;
  CK_OTHER_FN C_SignUpdate;
  CK_OTHER_FN C_SignFinal;
  CK_OTHER_FN C_SignRecoverInit;
  CK_OTHER_FN C_SignRecover;
  CK_RV (*C_VerifyInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey);
  CK_OTHER_FN C_Verify;
  CK_OTHER_FN C_VerifyUpdate;
  CK_OTHER_FN C_VerifyFinal;
  CK_OTHER_FN C_VerifyRecoverInit;
  CK_OTHER_FN C_VerifyRecover;
  CK_OTHER_FN C_DigestEncryptUpdate;
  CK_OTHER_FN C_DecryptDigestUpdate;
  CK_OTHER_FN C_SignEncryptUpdate;
  CK_OTHER_FN C_DecryptVerifyUpdate;
  CK_RV (*C_GenerateKey)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_ATTRIBUTE *pTemplate,
                         CK_ULONG ulCount, CK_OBJECT_HANDLE *phKey);
  CK_RV (*C_GenerateKeyPair)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_ATTRIBUTE *pPublicKeyTemplate,
                             CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE *pPrivateKeyTemplate,
                             CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE *phPublicKey,
                             CK_OBJECT_HANDLE *phPrivateKey);
  CK_RV (*C_WrapKey)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hWrappingKey,
                     CK_OBJECT_HANDLE hKey, CK_BYTE *pWrappedKey, CK_ULONG *pulWrappedKeyLen);
  CK_RV (*C_UnwrapKey)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
                       CK_BYTE *pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE *pTemplate, CK_ULONG ulAttributeCount,
                       CK_OBJECT_HANDLE *phKey);
  CK_RV (*C_DeriveKey)(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hBaseKey,
                       CK_ATTRIBUTE *pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE *phKey);
  CK_OTHER_FN C_SeedRandom;
  CK_RV (*C_GenerateRandom)(CK_SESSION_HANDLE hSession, CK_BYTE *RandomData, CK_ULONG ulRandomLen);
  CK_OTHER_FN C_GetFunctionStatus;
  CK_OTHER_FN C_CancelFunction;
  CK_OTHER_FN C_WaitForSlotEvent;
};

_Static_assert(sizeof(CK_FUNCTION_LIST) == offsetof(CK_FUNCTION_LIST, C_Initialize) + 68 * sizeof(void *),
               "CK_FUNCTION_LIST must hold exactly the 68 functions of PKCS#11 v2.40");

#define CK_TRUE 1
#define CKF_RW_SESSION 0x2UL
#define CKA_MODIFIABLE 0x170UL

#define CKR_OK 0x0UL
#define CKR_HOST_MEMORY 0x2UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKR_FUNCTION_FAILED 0x6UL
#define CKR_ARGUMENTS_BAD 0x7UL
#define CKR_ATTRIBUTE_VALUE_INVALID 0x13UL
#define CKR_DATA_LEN_RANGE 0x21UL
#define CKR_ENCRYPTED_DATA_INVALID 0x40UL
#define CKR_FUNCTION_NOT_SUPPORTED 0x54UL
#define CKR_MECHANISM_INVALID 0x70UL
#define CKR_MECHANISM_PARAM_INVALID 0x71UL
#define CKR_SESSION_HANDLE_INVALID 0xB3UL
#define CKR_BUFFER_TOO_SMALL 0x150UL

#define CKM_AES_GCM 0x1087UL
#define CKM_AES_ECB_ENCRYPT_DATA 0x1104UL
#define CKM_AES_CBC_ENCRYPT_DATA 0x1105UL
#define CKM_AES_KEY_WRAP_PAD 0x210AUL
#define CKM_AES_KEY_WRAP_KWP 0x210BUL
#define CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD 0x8000216FUL /* CKM_VENDOR_DEFINED | 0x216F */

/* [mechanisms] footnote 1: the HSM draws a 12-byte IV. [known issues]: at most 16 KB per C_Encrypt/C_Decrypt. */
#define GCM_IV_BYTES 12
#define GCM_TAG_BYTES 16
#define GCM_MAX_DATA_BYTES 16384UL

/* ---- The target module ---- */

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST *target; /* the forwarded-to module's own list */
static CK_FUNCTION_LIST shim;    /* what callers get: the target's list with the overrides below */

/* ---- HSM_KMS_SHIM_HIDE ---- */

#define MAX_HIDDEN 32
static CK_MECHANISM_TYPE hidden[MAX_HIDDEN];
static size_t hidden_count;

/* Parses "0x1087,4231" (base prefix as in C); a malformed entry is skipped with a warning on stderr. */
static void read_hidden_mechanisms(void) {
  hidden_count = 0;
  const char *list = getenv("HSM_KMS_SHIM_HIDE");
  if (list == NULL) return;
  const char *at = list;
  while (*at != '\0' && hidden_count < MAX_HIDDEN) {
    char *end;
    unsigned long value = strtoul(at, &end, 0);
    if (end == at || (*end != ',' && *end != '\0')) {
      fprintf(stderr, "cloudhsm-shim: ignoring malformed HSM_KMS_SHIM_HIDE entry in \"%s\"\n", list);
      end = strchr(at, ',');
      if (end == NULL) break;
    } else {
      hidden[hidden_count++] = value;
    }
    at = *end == ',' ? end + 1 : end;
  }
}

static int is_hidden(CK_MECHANISM_TYPE mechanism) {
  for (size_t i = 0; i < hidden_count; i++)
    if (hidden[i] == mechanism) return 1;
  return 0;
}

/* Mechanisms CloudHSM does not offer: no *_ENCRYPT_DATA derivation ([mechanisms], derive list), and no standard
 * CKM_AES_KEY_WRAP_PAD/_KWP (CloudHSM has vendor mechanisms instead; [mechanisms], wrap list). */
static int is_refused(CK_MECHANISM_TYPE mechanism) {
  return mechanism == CKM_AES_ECB_ENCRYPT_DATA || mechanism == CKM_AES_CBC_ENCRYPT_DATA ||
         mechanism == CKM_AES_KEY_WRAP_PAD || mechanism == CKM_AES_KEY_WRAP_KWP || is_hidden(mechanism);
}

/* ---- Sessions with a GCM operation under way ---- */

typedef struct gcm_session {
  CK_SESSION_HANDLE session;
  int encrypting;             /* a GCM C_EncryptInit succeeded and its C_Encrypt has not finished */
  CK_BYTE *caller_iv;         /* the caller's zeroed pIv, written at C_Encrypt */
  CK_BYTE iv[GCM_IV_BYTES];   /* the IV drawn for it, passed to the target */
  int decrypting;             /* a GCM C_DecryptInit succeeded and its C_Decrypt has not finished */
  struct gcm_session *next;
} gcm_session;

static pthread_mutex_t sessions_lock = PTHREAD_MUTEX_INITIALIZER;
static gcm_session *sessions;

/* Call with sessions_lock held. */
static gcm_session *find_session(CK_SESSION_HANDLE session) {
  for (gcm_session *s = sessions; s != NULL; s = s->next)
    if (s->session == session) return s;
  return NULL;
}

/* Call with sessions_lock held: unlinks and frees the entry once neither operation is under way. */
static void drop_if_idle(gcm_session *entry) {
  if (entry->encrypting || entry->decrypting) return;
  for (gcm_session **link = &sessions; *link != NULL; link = &(*link)->next) {
    if (*link == entry) {
      *link = entry->next;
      free(entry);
      return;
    }
  }
}

/* Call with sessions_lock held: the entry of the session, created if need be (NULL when out of memory). */
static gcm_session *session_entry(CK_SESSION_HANDLE session) {
  gcm_session *entry = find_session(session);
  if (entry != NULL) return entry;
  entry = calloc(1, sizeof *entry);
  if (entry == NULL) return NULL;
  entry->session = session;
  entry->next = sessions;
  sessions = entry;
  return entry;
}

static void set_encrypting(CK_SESSION_HANDLE session, int encrypting) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = encrypting ? session_entry(session) : find_session(session);
  if (entry != NULL) {
    entry->encrypting = encrypting;
    drop_if_idle(entry);
  }
  pthread_mutex_unlock(&sessions_lock);
}

static void set_decrypting(CK_SESSION_HANDLE session, int decrypting) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = decrypting ? session_entry(session) : find_session(session);
  if (entry != NULL) {
    entry->decrypting = decrypting;
    drop_if_idle(entry);
  }
  pthread_mutex_unlock(&sessions_lock);
}

/* Forgets sessions the target no longer knows (after C_CloseAllSessions), or all of them (after C_Finalize). */
static void forget_sessions(int all) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session **link = &sessions;
  while (*link != NULL) {
    CK_SESSION_INFO info;
    gcm_session *entry = *link;
    if (all || target->C_GetSessionInfo(entry->session, &info) == CKR_SESSION_HANDLE_INVALID) {
      *link = entry->next;
      free(entry);
    } else {
      link = &entry->next;
    }
  }
  pthread_mutex_unlock(&sessions_lock);
}

/* ---- Templates ---- */

/* [attributes]: CKA_MODIFIABLE may only be given at its default, CK_TRUE. */
static int template_ok(const CK_ATTRIBUTE *attributes, CK_ULONG count) {
  if (attributes == NULL) return 1;
  for (CK_ULONG i = 0; i < count; i++) {
    if (attributes[i].type != CKA_MODIFIABLE) continue;
    if (attributes[i].pValue == NULL || attributes[i].ulValueLen != sizeof(CK_BBOOL) ||
        *(const CK_BBOOL *)attributes[i].pValue != CK_TRUE)
      return 0;
  }
  return 1;
}

/* ---- Overrides ---- */

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST **ppFunctionList);

static CK_RV shim_C_Initialize(void *pInitArgs) {
  read_hidden_mechanisms();
  return target->C_Initialize(pInitArgs);
}

static CK_RV shim_C_Finalize(void *pReserved) {
  CK_RV rv = target->C_Finalize(pReserved);
  if (rv == CKR_OK) forget_sessions(1);
  return rv;
}

/* Tells the service's profile detection (C_GetInfo) that this is not plain SoftHSM. */
static CK_RV shim_C_GetInfo(CK_INFO *pInfo) {
  CK_RV rv = target->C_GetInfo(pInfo);
  if (rv != CKR_OK) return rv;
  static const char manufacturer[] = "hsm-kms test shim";
  static const char description[] = "CloudHSM rules over SoftHSM";
  memset(pInfo->manufacturerID, ' ', sizeof pInfo->manufacturerID); /* blank padded, not NUL terminated */
  memcpy(pInfo->manufacturerID, manufacturer, sizeof manufacturer - 1);
  memset(pInfo->libraryDescription, ' ', sizeof pInfo->libraryDescription);
  memcpy(pInfo->libraryDescription, description, sizeof description - 1);
  return CKR_OK;
}

/* Lists the target's mechanisms minus the refused and hidden ones, plus CloudHSM's zero-pad wrap where the target
 * can do RFC 5649 (SoftHSM 2.6.1 does it under CKM_AES_KEY_WRAP_PAD). */
static CK_RV shim_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE *pMechanismList, CK_ULONG *pulCount) {
  if (pulCount == NULL) return CKR_ARGUMENTS_BAD;
  CK_ULONG count = 0;
  CK_RV rv = target->C_GetMechanismList(slotID, NULL, &count);
  if (rv != CKR_OK) return rv;
  CK_MECHANISM_TYPE *all = calloc(count + 1, sizeof *all);
  if (all == NULL) return CKR_HOST_MEMORY;
  rv = target->C_GetMechanismList(slotID, all, &count);
  if (rv != CKR_OK) {
    free(all);
    return rv;
  }
  CK_ULONG kept = 0;
  int has_rfc5649 = 0;
  for (CK_ULONG i = 0; i < count; i++) {
    if (all[i] == CKM_AES_KEY_WRAP_PAD) has_rfc5649 = 1;
    if (!is_refused(all[i])) all[kept++] = all[i];
  }
  if (has_rfc5649 && !is_hidden(CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD)) all[kept++] = CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD;

  if (pMechanismList == NULL) {
    rv = CKR_OK;
  } else if (*pulCount < kept) {
    rv = CKR_BUFFER_TOO_SMALL;
  } else {
    memcpy(pMechanismList, all, kept * sizeof *all);
    rv = CKR_OK;
  }
  *pulCount = kept;
  free(all);
  return rv;
}

static CK_RV shim_C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *pInfo) {
  if (is_refused(type)) return CKR_MECHANISM_INVALID;
  if (type == CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD) type = CKM_AES_KEY_WRAP_PAD;
  return target->C_GetMechanismInfo(slotID, type, pInfo);
}

/* [known issues]: SDK 5 does not support read-only sessions and answers CKR_FUNCTION_FAILED. */
static CK_RV shim_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, void *pApplication, void *Notify,
                                CK_SESSION_HANDLE *phSession) {
  if ((flags & CKF_RW_SESSION) == 0) return CKR_FUNCTION_FAILED;
  return target->C_OpenSession(slotID, flags, pApplication, Notify, phSession);
}

static CK_RV shim_C_CloseSession(CK_SESSION_HANDLE hSession) {
  CK_RV rv = target->C_CloseSession(hSession);
  set_encrypting(hSession, 0);
  set_decrypting(hSession, 0);
  return rv;
}

static CK_RV shim_C_CloseAllSessions(CK_SLOT_ID slotID) {
  CK_RV rv = target->C_CloseAllSessions(slotID);
  forget_sessions(0);
  return rv;
}

static CK_RV shim_C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE *pTemplate, CK_ULONG ulCount,
                                 CK_OBJECT_HANDLE *phObject) {
  if (!template_ok(pTemplate, ulCount)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_CreateObject(hSession, pTemplate, ulCount, phObject);
}

static CK_RV shim_C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE *pTemplate,
                               CK_ULONG ulCount, CK_OBJECT_HANDLE *phNewObject) {
  if (!template_ok(pTemplate, ulCount)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject);
}

static CK_RV shim_C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE *pTemplate,
                                      CK_ULONG ulCount) {
  if (!template_ok(pTemplate, ulCount)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_SetAttributeValue(hSession, hObject, pTemplate, ulCount);
}

/* [mechanisms] footnote 1: the application's IV is not accepted; pIv must point to GCM_IV_BYTES zero bytes, into
 * which the HSM writes its own IV. (CloudHSM documents no return code for a non-zero pIv: the shim picks
 * CKR_MECHANISM_PARAM_INVALID.) The IV is drawn here with the target's C_GenerateRandom and handed to the target;
 * the caller's buffer is written only when C_Encrypt produces output, as on CloudHSM. The caller must keep that
 * buffer alive until then: pkcs11js passes a Buffer's own memory, so holding the Buffer is enough. */
static CK_RV shim_C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey) {
  if (pMechanism == NULL) return target->C_EncryptInit(hSession, pMechanism, hKey);
  if (is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  if (pMechanism->mechanism != CKM_AES_GCM) {
    CK_RV rv = target->C_EncryptInit(hSession, pMechanism, hKey);
    if (rv == CKR_OK) set_encrypting(hSession, 0); /* whatever GCM operation there was has ended */
    return rv;
  }

  const CK_GCM_PARAMS *params = pMechanism->pParameter;
  if (params == NULL || pMechanism->ulParameterLen != sizeof *params || params->pIv == NULL ||
      params->ulIvLen != GCM_IV_BYTES)
    return CKR_MECHANISM_PARAM_INVALID;
  for (int i = 0; i < GCM_IV_BYTES; i++)
    if (params->pIv[i] != 0) return CKR_MECHANISM_PARAM_INVALID;

  CK_BYTE iv[GCM_IV_BYTES];
  CK_RV rv = target->C_GenerateRandom(hSession, iv, sizeof iv);
  if (rv != CKR_OK) return rv;
  CK_GCM_PARAMS with_iv = *params;
  with_iv.pIv = iv; /* SoftHSM copies the IV at C_EncryptInit */
  with_iv.ulIvBits = GCM_IV_BYTES * 8;
  CK_MECHANISM mechanism = {CKM_AES_GCM, &with_iv, sizeof with_iv};
  rv = target->C_EncryptInit(hSession, &mechanism, hKey);
  if (rv != CKR_OK) return rv; /* e.g. CKR_OPERATION_ACTIVE: the operation under way keeps its IV */

  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = session_entry(hSession);
  if (entry != NULL) {
    entry->encrypting = 1;
    entry->caller_iv = params->pIv;
    memcpy(entry->iv, iv, sizeof iv);
  }
  pthread_mutex_unlock(&sessions_lock);
  if (entry == NULL) return CKR_HOST_MEMORY;
  return CKR_OK;
}

/* A real module ends a single-part operation that fails with anything but CKR_BUFFER_TOO_SMALL. PKCS#11 v2.40 has
 * no call that cancels one, so the shim runs the target's operation to its end on the caller's data and discards
 * (and wipes) the output. */
typedef CK_RV (*single_part_fn)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);
static void end_operation(single_part_fn call, CK_SESSION_HANDLE hSession, CK_BYTE *pIn, CK_ULONG ulInLen) {
  CK_ULONG outLen = ulInLen + GCM_TAG_BYTES;
  CK_BYTE *out = malloc(outLen);
  if (out == NULL) return;
  call(hSession, pIn, ulInLen, out, &outLen);
  memset(out, 0, ulInLen + GCM_TAG_BYTES);
  free(out);
}

/* Whether a single-part call left the operation active: a length query, or an output buffer too small. */
static int still_active(CK_RV rv, const CK_BYTE *pOut) {
  return (rv == CKR_OK && pOut == NULL) || rv == CKR_BUFFER_TOO_SMALL;
}

static CK_RV shim_C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE *pData, CK_ULONG ulDataLen, CK_BYTE *pEncryptedData,
                            CK_ULONG *pulEncryptedDataLen) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = find_session(hSession);
  int gcm = entry != NULL && entry->encrypting;
  CK_BYTE *caller_iv = gcm ? entry->caller_iv : NULL;
  CK_BYTE iv[GCM_IV_BYTES];
  if (gcm) memcpy(iv, entry->iv, sizeof iv);
  pthread_mutex_unlock(&sessions_lock);
  if (!gcm) return target->C_Encrypt(hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen);

  /* [known issues]: at most 16 KB of data per GCM call. */
  if (ulDataLen > GCM_MAX_DATA_BYTES) {
    end_operation(target->C_Encrypt, hSession, pData, ulDataLen);
    set_encrypting(hSession, 0);
    return CKR_DATA_LEN_RANGE;
  }
  CK_RV rv = target->C_Encrypt(hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen);
  if (still_active(rv, pEncryptedData)) return rv; /* the IV is not used up yet */
  set_encrypting(hSession, 0);
  if (rv == CKR_OK) memcpy(caller_iv, iv, sizeof iv);
  return rv;
}

/* [mechanisms]: CloudHSM's CKM_AES_GCM is single-part only. Multi-part would also never hand the IV back. (No
 * documented return code: the shim picks CKR_FUNCTION_NOT_SUPPORTED and ends the operation.) */
static CK_RV shim_C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE *pPart, CK_ULONG ulPartLen,
                                  CK_BYTE *pEncryptedPart, CK_ULONG *pulEncryptedPartLen) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = find_session(hSession);
  int gcm = entry != NULL && entry->encrypting;
  pthread_mutex_unlock(&sessions_lock);
  if (!gcm) return target->C_EncryptUpdate(hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
  CK_BYTE none = 0;
  end_operation(target->C_Encrypt, hSession, &none, 0);
  set_encrypting(hSession, 0);
  return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV shim_C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey) {
  if (pMechanism != NULL && is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  CK_RV rv = target->C_DecryptInit(hSession, pMechanism, hKey);
  if (rv == CKR_OK) set_decrypting(hSession, pMechanism != NULL && pMechanism->mechanism == CKM_AES_GCM);
  return rv;
}

static CK_RV shim_C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE *pEncryptedData, CK_ULONG ulEncryptedDataLen,
                            CK_BYTE *pData, CK_ULONG *pulDataLen) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = find_session(hSession);
  int gcm = entry != NULL && entry->decrypting;
  pthread_mutex_unlock(&sessions_lock);
  if (!gcm) return target->C_Decrypt(hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen);

  /* [known issues]: at most 16 KB of data per GCM call, i.e. 16 KB of plaintext plus the tag here. */
  if (ulEncryptedDataLen > GCM_MAX_DATA_BYTES + GCM_TAG_BYTES) {
    end_operation(target->C_Decrypt, hSession, pEncryptedData, ulEncryptedDataLen);
    set_decrypting(hSession, 0);
    return CKR_DATA_LEN_RANGE;
  }
  CK_RV rv = target->C_Decrypt(hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen);
  if (!still_active(rv, pData)) set_decrypting(hSession, 0);
  /* SoftHSM reports a tag that does not verify as CKR_GENERAL_ERROR, its own quirk; CloudHSM documents no code, so
     the shim answers the one PKCS#11 names. A real module that differs fails the service's start-up self-test. */
  return rv == CKR_GENERAL_ERROR ? CKR_ENCRYPTED_DATA_INVALID : rv;
}

static CK_RV shim_C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE *pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                                  CK_BYTE *pPart, CK_ULONG *pulPartLen) {
  pthread_mutex_lock(&sessions_lock);
  gcm_session *entry = find_session(hSession);
  int gcm = entry != NULL && entry->decrypting;
  pthread_mutex_unlock(&sessions_lock);
  if (!gcm) return target->C_DecryptUpdate(hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
  CK_BYTE none[GCM_TAG_BYTES] = {0};
  end_operation(target->C_Decrypt, hSession, none, sizeof none);
  set_decrypting(hSession, 0);
  return CKR_FUNCTION_NOT_SUPPORTED; /* single-part only, as C_EncryptUpdate */
}

static CK_RV shim_C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey) {
  if (pMechanism != NULL && is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  return target->C_SignInit(hSession, pMechanism, hKey);
}

static CK_RV shim_C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hKey) {
  if (pMechanism != NULL && is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  return target->C_VerifyInit(hSession, pMechanism, hKey);
}

static CK_RV shim_C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_ATTRIBUTE *pTemplate,
                                CK_ULONG ulCount, CK_OBJECT_HANDLE *phKey) {
  if (pMechanism != NULL && is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  if (!template_ok(pTemplate, ulCount)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_GenerateKey(hSession, pMechanism, pTemplate, ulCount, phKey);
}

static CK_RV shim_C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism,
                                    CK_ATTRIBUTE *pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
                                    CK_ATTRIBUTE *pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
                                    CK_OBJECT_HANDLE *phPublicKey, CK_OBJECT_HANDLE *phPrivateKey) {
  if (pMechanism != NULL && is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  if (!template_ok(pPublicKeyTemplate, ulPublicKeyAttributeCount) ||
      !template_ok(pPrivateKeyTemplate, ulPrivateKeyAttributeCount))
    return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_GenerateKeyPair(hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
                                   pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey);
}

/* [wrapping]: CloudHSM's RFC 5649 is its vendor zero-pad mechanism; SoftHSM 2.6.1 does RFC 5649 under
 * CKM_AES_KEY_WRAP_PAD (softhsmv2 issue #726), so that is what the target is asked for. Returns NULL when the
 * mechanism is refused; otherwise the mechanism to forward (the caller's, or *translated). */
static CK_MECHANISM *wrap_mechanism(CK_MECHANISM *pMechanism, CK_MECHANISM *translated) {
  if (pMechanism == NULL) return pMechanism;
  if (is_refused(pMechanism->mechanism)) return NULL;
  if (pMechanism->mechanism != CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD) return pMechanism;
  *translated = *pMechanism;
  translated->mechanism = CKM_AES_KEY_WRAP_PAD;
  return translated;
}

static CK_RV shim_C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hWrappingKey,
                            CK_OBJECT_HANDLE hKey, CK_BYTE *pWrappedKey, CK_ULONG *pulWrappedKeyLen) {
  CK_MECHANISM translated;
  CK_MECHANISM *mechanism = wrap_mechanism(pMechanism, &translated);
  if (pMechanism != NULL && mechanism == NULL) return CKR_MECHANISM_INVALID;
  return target->C_WrapKey(hSession, mechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen);
}

static CK_RV shim_C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
                              CK_BYTE *pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE *pTemplate,
                              CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE *phKey) {
  CK_MECHANISM translated;
  CK_MECHANISM *mechanism = wrap_mechanism(pMechanism, &translated);
  if (pMechanism != NULL && mechanism == NULL) return CKR_MECHANISM_INVALID;
  if (!template_ok(pTemplate, ulAttributeCount)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_UnwrapKey(hSession, mechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate,
                             ulAttributeCount, phKey);
}

/* [mechanisms]: CloudHSM derives only with SP800-108 counter KDF and ECDH; no CKM_AES_*_ENCRYPT_DATA. */
static CK_RV shim_C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM *pMechanism, CK_OBJECT_HANDLE hBaseKey,
                              CK_ATTRIBUTE *pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE *phKey) {
  if (pMechanism != NULL && is_refused(pMechanism->mechanism)) return CKR_MECHANISM_INVALID;
  if (!template_ok(pTemplate, ulAttributeCount)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return target->C_DeriveKey(hSession, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey);
}

/* ---- Entry point ---- */

static CK_RV load_target(void) {
  const char *path = getenv("HSM_KMS_SHIM_TARGET");
  if (path == NULL || *path == '\0') path = "/usr/lib/softhsm/libsofthsm2.so";
  void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (library == NULL) {
    fprintf(stderr, "cloudhsm-shim: cannot load the target module %s: %s\n", path, dlerror());
    return CKR_GENERAL_ERROR;
  }
  CK_C_GetFunctionList get_function_list = (CK_C_GetFunctionList)dlsym(library, "C_GetFunctionList");
  CK_FUNCTION_LIST *list = NULL;
  if (get_function_list == NULL || get_function_list(&list) != CKR_OK || list == NULL) {
    fprintf(stderr, "cloudhsm-shim: %s has no usable C_GetFunctionList\n", path);
    dlclose(library);
    return CKR_GENERAL_ERROR;
  }
  target = list;
  shim = *list;
  shim.C_Initialize = shim_C_Initialize;
  shim.C_Finalize = shim_C_Finalize;
  shim.C_GetInfo = shim_C_GetInfo;
  shim.C_GetFunctionList = shim_C_GetFunctionList;
  shim.C_GetMechanismList = shim_C_GetMechanismList;
  shim.C_GetMechanismInfo = shim_C_GetMechanismInfo;
  shim.C_OpenSession = shim_C_OpenSession;
  shim.C_CloseSession = shim_C_CloseSession;
  shim.C_CloseAllSessions = shim_C_CloseAllSessions;
  shim.C_CreateObject = shim_C_CreateObject;
  shim.C_CopyObject = shim_C_CopyObject;
  shim.C_SetAttributeValue = shim_C_SetAttributeValue;
  shim.C_EncryptInit = shim_C_EncryptInit;
  shim.C_Encrypt = shim_C_Encrypt;
  shim.C_EncryptUpdate = shim_C_EncryptUpdate;
  shim.C_DecryptInit = shim_C_DecryptInit;
  shim.C_Decrypt = shim_C_Decrypt;
  shim.C_DecryptUpdate = shim_C_DecryptUpdate;
  shim.C_SignInit = shim_C_SignInit;
  shim.C_VerifyInit = shim_C_VerifyInit;
  shim.C_GenerateKey = shim_C_GenerateKey;
  shim.C_GenerateKeyPair = shim_C_GenerateKeyPair;
  shim.C_WrapKey = shim_C_WrapKey;
  shim.C_UnwrapKey = shim_C_UnwrapKey;
  shim.C_DeriveKey = shim_C_DeriveKey;
  return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ppFunctionList) {
  return shim_C_GetFunctionList(ppFunctionList);
}

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST **ppFunctionList) {
  if (ppFunctionList == NULL) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&load_lock);
  CK_RV rv = target != NULL ? CKR_OK : load_target();
  pthread_mutex_unlock(&load_lock);
  if (rv == CKR_OK) *ppFunctionList = &shim;
  return rv;
}
