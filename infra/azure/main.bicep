// pdcat on Azure: the Function App (Python 3.11, Linux, Flex Consumption) serving core's HTTP contract,
// Cosmos DB (NoSQL) for the catalog, Blob Storage for the VM chunks, Key Vault for the one secret.
//
// No keys anywhere: the app reaches Cosmos DB, Blob Storage (user-delegation SAS), its own host
// storage and Key Vault with one user-assigned managed identity; Cosmos DB and both storage accounts
// refuse key-based access. Deploy with infra/azure/deploy; checked offline by
// tests/infra/test_azure_bicep.py (pycep parse + checkov, every skipped check justified in place).

targetScope = 'resourceGroup'

@description('Azure region of every resource (one that offers the Flex Consumption plan).')
param location string = resourceGroup().location

@description('Short prefix of every resource name: lowercase letters and digits (storage account names allow nothing else).')
@minLength(3)
@maxLength(8)
param namePrefix string = 'pdcat'

@description('JWKS URL of the identity provider (RS/ES tokens). Leave empty when jwtSecret is set.')
param jwksUrl string = ''

@description('HS256 JWT signing secret. Stored in Key Vault; the app reads it through a Key Vault reference. Leave empty when jwksUrl is set.')
@secure()
param jwtSecret string = ''

@description('Expected iss of every token (empty: not checked).')
param jwtIssuer string = ''

@description('Expected aud of every token (empty: not checked).')
param jwtAudience string = ''

@description('Lifetime of the SAS URLs handed to clients, in seconds.')
@minValue(1)
@maxValue(604800)
param urlExpirySeconds int = 900

@description('Upper bound of Flex Consumption instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Days Log Analytics keeps the app\'s logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

var suffix = uniqueString(resourceGroup().id, namePrefix)
var useJwtSecret = !empty(jwtSecret)
var cosmosDatabaseName = 'pdcat'
var cosmosContainerName = 'catalog'
var cosmosPartitionKeyPath = '/pk'
var blobContainerName = 'pdcat'
var deploymentContainerName = 'deployments'
var jwtSecretName = 'pdcat-jwt-secret'

// Built-in role definitions (Azure RBAC) and the Cosmos DB built-in data-plane role.
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var cosmosBuiltInDataContributor = '00000000-0000-0000-0000-000000000002'

// ---- identity ------------------------------------------------------------------------------------
resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-id-${suffix}'
  location: location
}

// ---- blob storage for the catalog's chunks (clients use user-delegation SAS URLs) ---------------
resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: clients download and upload chunks from anywhere through SAS URLs, so the network must stay open; every request still needs a user-delegation SAS (shared keys are disabled)
  // checkov:skip=CKV_AZURE_59: public network access is how clients anywhere reach their SAS URLs; shared keys are disabled, so every request needs a user-delegation SAS
  // checkov:skip=CKV_AZURE_43: the name is take(namePrefix + 'data' + uniqueString(...), 24): lowercase letters and digits, 3 to 24 characters, as storage requires; checkov cannot evaluate the expression
  name: take('${namePrefix}data${suffix}', 24)
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_GZRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    sasPolicy: {
      sasExpirationPeriod: '7.00:00:00'
      expirationAction: 'Log'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource dataBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource dataContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: blobContainerName
  properties: {
    publicAccess: 'None'
  }
}

// ---- the Functions host's own storage (AzureWebJobsStorage and the deployment package) ----------
resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the Flex Consumption host reaches this account without a virtual network; access is by managed identity only (shared keys are disabled)
  // checkov:skip=CKV_AZURE_59: the Flex Consumption host reaches this account over its public endpoint (no virtual network); access is by managed identity only
  // checkov:skip=CKV_AZURE_206: holds only the host's leases and the deployment package, both recreated by a redeploy: zone-redundant (ZRS) is enough, geo-replication would only add cost
  // checkov:skip=CKV_AZURE_43: the name is take(namePrefix + 'host' + uniqueString(...), 24): lowercase letters and digits, 3 to 24 characters, as storage requires; checkov cannot evaluate the expression
  name: take('${namePrefix}host${suffix}', 24)
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    sasPolicy: {
      sasExpirationPeriod: '1.00:00:00'
      expirationAction: 'Log'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource hostBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// ---- Cosmos DB (NoSQL): the catalog, reached with the identity only ----------------------------
resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  // checkov:skip=CKV_AZURE_99: the Function App reaches Cosmos DB without a virtual network (Flex Consumption without VNet integration); keys are disabled, so every request needs an Entra token with a data-plane role
  // checkov:skip=CKV_AZURE_101: the Function App reaches Cosmos DB over its public endpoint (no virtual network); keys are disabled, so only Entra tokens with a data-plane role get in
  name: '${namePrefix}-cosmos-${suffix}'
  location: location
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
    backupPolicy: {
      type: 'Continuous'
      continuousModeProperties: {
        tier: 'Continuous7Days'
      }
    }
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
  }
}

resource cosmosDatabase 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: cosmos
  name: cosmosDatabaseName
  properties: {
    resource: {
      id: cosmosDatabaseName
    }
  }
}

// The partition key and indexing policy of azure_app/azurelib/cosmos_store.py (PARTITION_KEY_PATH,
// INDEXING_POLICY): only the fields queries filter or sort on are indexed.
resource cosmosContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: cosmosDatabase
  name: cosmosContainerName
  properties: {
    resource: {
      id: cosmosContainerName
      partitionKey: {
        paths: [
          cosmosPartitionKeyPath
        ]
        kind: 'Hash'
        version: 2
      }
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          {
            path: '/pk/?'
          }
          {
            path: '/type/?'
          }
          {
            path: '/sk/?'
          }
          {
            path: '/m/architecture/?'
          }
          {
            path: '/m/tags/[]/?'
          }
        ]
        excludedPaths: [
          {
            path: '/*'
          }
        ]
      }
    }
  }
}

// Data-plane RBAC: Cosmos DB Built-in Data Contributor, on the catalog's database only.
resource cosmosDataRole 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = {
  parent: cosmos
  name: guid(cosmos.id, appIdentity.id, cosmosBuiltInDataContributor)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosBuiltInDataContributor}'
    principalId: appIdentity.properties.principalId
    scope: '${cosmos.id}/dbs/${cosmosDatabaseName}'
  }
}

// ---- Key Vault: the JWT secret (when one is used), read by the app through a Key Vault reference ---
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: the Functions platform resolves Key Vault references without a virtual network here; access is Azure RBAC only, scoped to the one secret
  // checkov:skip=CKV_AZURE_189: the Functions platform resolves Key Vault references over the vault's public endpoint here (no virtual network); access is Azure RBAC only, scoped to the one secret
  name: take('${namePrefix}-kv-${suffix}', 24)
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enablePurgeProtection: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource jwtSecretEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (useJwtSecret) {
  // checkov:skip=CKV_AZURE_41: an expiry date would switch the API's token checks off on that date; rotate by setting a new version (the reference is versionless)
  // checkov:skip=CKV_AZURE_114: contentType is set (text/plain); checkov does not read the properties of a conditional resource (tests/infra asserts them)
  parent: vault
  name: jwtSecretName
  properties: {
    value: jwtSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

// ---- monitoring ------------------------------------------------------------------------------------
resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs-${suffix}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-appi-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

// ---- the Function App ------------------------------------------------------------------------------
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: a Flex Consumption plan can be zone-redundant only in regions with availability zones for Flex; set properties.zoneRedundant where the region offers it (both storage accounts are zone-redundant already)
  name: '${namePrefix}-plan-${suffix}'
  location: location
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var commonSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: hostStorage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: appIdentity.properties.clientId
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: appIdentity.properties.clientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: insights.properties.ConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${appIdentity.properties.clientId};Authorization=AAD'
  }
  {
    name: 'PDCAT_COSMOS_ENDPOINT'
    value: cosmos.properties.documentEndpoint
  }
  {
    name: 'PDCAT_COSMOS_DATABASE'
    value: cosmosDatabaseName
  }
  {
    name: 'PDCAT_COSMOS_CONTAINER'
    value: cosmosContainerName
  }
  {
    name: 'PDCAT_BLOB_ACCOUNT_URL'
    value: dataStorage.properties.primaryEndpoints.blob
  }
  {
    name: 'PDCAT_BLOB_CONTAINER'
    value: blobContainerName
  }
  {
    name: 'PDCAT_JWKS_URL'
    value: jwksUrl
  }
  {
    name: 'PDCAT_JWT_ISSUER'
    value: jwtIssuer
  }
  {
    name: 'PDCAT_JWT_AUDIENCE'
    value: jwtAudience
  }
  {
    name: 'PDCAT_URL_EXPIRY_SECONDS'
    value: string(urlExpirySeconds)
  }
  {
    name: 'PDCAT_LOG_LEVEL'
    value: 'INFO'
  }
]

// The secret itself never becomes an app setting: the platform resolves this reference with the
// app's identity (keyVaultReferenceIdentity) and hands the value to the worker.
var secretSettings = useJwtSecret ? [
  {
    name: 'PDCAT_JWT_SECRET'
    value: '@Microsoft.KeyVault(VaultName=${vault.name};SecretName=${jwtSecretName})'
  }
] : []

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the catalog API is public by design: its clients are command-line users anywhere, and every request carries a token the app verifies
  // checkov:skip=CKV_AZURE_17: clients authenticate with bearer tokens (JWT or API key) checked by the app; mutual TLS would need a certificate on every user's machine
  // checkov:skip=CKV_AZURE_213: the platform health check evicts unhealthy instances of a fixed pool, which consumption plans do not have; /api/v1/health answers external probes
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances on demand (maximumInstanceCount); there is no fixed instance count to raise
  name: '${namePrefix}-func-${suffix}'
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${appIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: appIdentity.id
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(commonSettings, secretSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: appIdentity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    deploymentContainer
    hostBlobOwner
    jwtSecretReader
  ]
}

// Basic publishing credentials (FTP and SCM) off: deployments authenticate with Entra ID.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---- role assignments of the app's identity (each on the narrowest scope that works) --------------
// Read and write the catalog's chunks: the data container only.
resource dataBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: dataContainer
  name: guid(dataContainer.id, appIdentity.id, storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Get a user delegation key to sign SAS URLs (an account-level operation).
resource dataBlobDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: dataStorage
  name: guid(dataStorage.id, appIdentity.id, storageBlobDelegator)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDelegator)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The Functions host's leases, keys and deployment package (what identity-based AzureWebJobsStorage needs).
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, appIdentity.id, storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Read the JWT secret: that one secret, not the vault.
resource jwtSecretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useJwtSecret) {
  scope: jwtSecretEntry
  name: guid(vault.id, jwtSecretName, appIdentity.id, keyVaultSecretsUser)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Send telemetry to Application Insights with Entra ID (local auth is off).
resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: insights
  name: guid(insights.id, appIdentity.id, monitoringMetricsPublisher)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

output functionAppName string = functionApp.name
output functionAppUrl string = 'https://${functionApp.properties.defaultHostName}'
output cosmosEndpoint string = cosmos.properties.documentEndpoint
output blobAccountUrl string = dataStorage.properties.primaryEndpoints.blob
output keyVaultName string = vault.name
