# RUNS INSIDE A WINDOWS GUEST, not on the host (run it as Administrator at start-up, e.g. from a
# scheduled task, and after adding or converting disks). Never run by the backup itself.
#
# A Hyper-V host cannot see a guest's volumes. This publishes them to the host through the
# Data Exchange (KVP) integration service: values under HKLM\SOFTWARE\Microsoft\Virtual Machine\Guest
# reach the host as Msvm_KvpExchangeComponent.GuestExchangeItems, where enumerate.ps1 reads them.
#
# Value VmBackupVolumes = "<mount>|<file system>|<dynamic 0/1>;..." (KVP values hold 1024 chars),
# e.g. "C:|NTFS|0;D:|ReFS|0;E:|NTFS|1". Only mounted volumes (drive letter or folder) are listed:
# the EFI system and recovery partitions are not part of a guest VSS snapshot set.
# A volume that no basic partition carries (LDM partitions: dynamic disk) is marked dynamic.
$ErrorActionPreference = 'Stop'

$ldmGptTypes = @('{5808c8aa-7e8f-42e0-85d2-e1e90434cfb3}', '{af9b60a0-1431-4f62-bc68-3311714a69ad}')
$basicPaths = @{}
$mounts = @{}
foreach ($p in @(Storage\Get-Partition)) {
    $isLdm = ($ldmGptTypes -contains ([string]$p.GptType).ToLowerInvariant()) -or ($p.MbrType -eq 66)
    if ($isLdm) { continue }
    $volumePath = $null
    $folder = $null
    foreach ($ap in @($p.AccessPaths)) {
        if (-not $ap) { continue }
        if ($ap.StartsWith('\\?\')) { $volumePath = $ap.ToLowerInvariant() } elseif (-not $folder) { $folder = $ap.TrimEnd('\') }
    }
    if ($volumePath) {
        $basicPaths[$volumePath] = $true
        if ($folder) { $mounts[$volumePath] = $folder }
    }
}

$entries = New-Object System.Collections.Generic.List[string]
foreach ($v in @(Storage\Get-Volume)) {
    if (-not $v.FileSystem) { continue }
    $path = ([string]$v.Path).ToLowerInvariant()
    $mount = $null
    if ($v.DriveLetter) { $mount = ([string]$v.DriveLetter) + ':' } elseif ($mounts.ContainsKey($path)) { $mount = $mounts[$path] }
    if (-not $mount) { continue }
    $dynamic = 0
    if (-not $basicPaths.ContainsKey($path)) { $dynamic = 1 }
    $entries.Add(($mount -replace '[|;]', '_') + '|' + [string]$v.FileSystem + '|' + $dynamic)
}
$value = $entries -join ';'
if ($value.Length -gt 1024) { $value = 'overflow' }

$key = 'HKLM:\SOFTWARE\Microsoft\Virtual Machine\Guest'
if (-not (Test-Path -LiteralPath $key)) { New-Item -Path $key -Force | Out-Null }
Set-ItemProperty -LiteralPath $key -Name 'VmBackupVolumes' -Value $value -Type String
Write-Output "VmBackupVolumes = $value"
